"""Unsupervised lesion candidates "3DCC" of DeCoVNet (models.md §1.6, ``3DCC.py``).

Each axial slice of a binary lung(-air) mask is tiled into non-overlapping 6 x 6 windows; a
window is a candidate when the mask inside it is fragmented (at least three 8-connected pieces)
and about half filled (|std - 0.5| < 0.05, i.e. 28-72 % lung). Candidate windows are stacked and
3D-labelled (26-connectivity); the original keeps the largest component only, here every
component of at least ``min_windows`` windows can be kept as well. Slices outside
[10 %, 80 %) of the mask's z extent are ignored, as in the original.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.preprocessing import bounding_box

CC3D_WINDOW_PX = 6
CC3D_MIN_PIECES = 3  # more than 3 labels including the background
CC3D_STD_TARGET = 0.5
CC3D_STD_TOLERANCE = 0.05
CC3D_Z_RANGE = (0.1, 0.8)  # share of the mask's z extent searched
CC3D_CHUNK_SLICES = 32  # slices labelled at once (bounds memory)

_SLICE_8 = np.zeros((3, 3, 3), dtype=bool)
_SLICE_8[1] = True


def fragmented_windows(
    mask: npt.NDArray[np.bool_], window_px: int = CC3D_WINDOW_PX
) -> npt.NDArray[np.bool_]:
    """Per slice, the window grid (z x H//w x W//w) of fragmented, half-filled windows."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {m.shape}")
    w = window_px
    nz, ny, nx = m.shape[0], m.shape[1] // w, m.shape[2] // w
    out = np.zeros((nz, ny, nx), dtype=bool)
    if ny == 0 or nx == 0:
        return out
    tiles = m[:, : ny * w, : nx * w].reshape(nz, ny, w, nx, w)
    fill = tiles.mean(axis=(2, 4))
    std = np.sqrt(fill * (1.0 - fill))
    half = np.abs(std - CC3D_STD_TARGET) < CC3D_STD_TOLERANCE
    for z0 in range(0, nz, CC3D_CHUNK_SLICES):
        z1 = min(nz, z0 + CC3D_CHUNK_SLICES)
        if not half[z0:z1].any():
            continue
        out[z0:z1] = half[z0:z1] & (_pieces_per_window(tiles[z0:z1]) >= CC3D_MIN_PIECES)
    return out


def _pieces_per_window(tiles: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """8-connected foreground pieces inside each window (z x ny x w x nx x w tiles)."""
    nz, ny, w, nx, _ = tiles.shape
    # A one-pixel empty gutter after each window keeps pieces of neighbours apart.
    gutter = np.zeros((nz, ny, w + 1, nx, w + 1), dtype=bool)
    gutter[:, :, :w, :, :w] = tiles
    plane = gutter.reshape(nz, ny * (w + 1), nx * (w + 1))
    labels, count = ndimage.label(plane, structure=_SLICE_8)
    if count == 0:
        return np.zeros((nz, ny, nx), dtype=np.int64)
    zz, yy, xx = np.nonzero(labels)
    window_id = (zz * ny + yy // (w + 1)) * nx + xx // (w + 1)
    window_of_label = np.zeros(count + 1, dtype=np.int64)
    window_of_label[labels[zz, yy, xx]] = window_id
    counts = np.bincount(window_of_label[1:], minlength=nz * ny * nx)
    return counts.reshape(nz, ny, nx)


def cc3d_candidates(
    mask: npt.NDArray[np.bool_],
    window_px: int = CC3D_WINDOW_PX,
    keep_all: bool = False,
    min_windows: int = 1,
    z_range: tuple[float, float] = CC3D_Z_RANGE,
) -> npt.NDArray[np.bool_]:
    """Candidate lesion region(s) as a voxel mask of the input's shape.

    ``keep_all`` False keeps the largest 3D component of candidate windows (the paper);
    True keeps every component with at least ``min_windows`` windows.
    """
    m = np.asarray(mask, dtype=bool)
    out = np.zeros(m.shape, dtype=bool)
    box = bounding_box(m)
    if box is None:
        return out
    extent = box.z1 - box.z0
    z_lo = box.z0 + int(np.floor(z_range[0] * extent))
    z_hi = box.z0 + int(np.floor(z_range[1] * extent))
    if z_hi <= z_lo:
        return out
    # Only the mask's in-plane box is searched; its origin is snapped to the window grid so the
    # windows stay on the full image grid (origin 0, 0), as in the original.
    w = window_px
    y0, x0 = (box.y0 // w) * w, (box.x0 // w) * w
    grid = fragmented_windows(m[z_lo:z_hi, y0 : box.y1, x0 : box.x1], w)
    labels, count = ndimage.label(grid, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if keep_all:
        keep = sizes >= max(1, min_windows)
        keep[0] = False
    else:
        keep = np.zeros(count + 1, dtype=bool)
        keep[int(np.argmax(sizes))] = True
    selected = keep[labels]
    pixels = np.repeat(np.repeat(selected, w, axis=1), w, axis=2)
    out[z_lo:z_hi, y0 : y0 + pixels.shape[1], x0 : x0 + pixels.shape[2]] = pixels
    return out
