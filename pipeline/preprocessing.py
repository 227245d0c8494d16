"""Image preprocessing shared by the inference stages and ``training/`` (plain numpy and scipy).

HU windowing, separable resampling along any axis (nearest, linear, cubic), z-resampling to
1-mm slices, bounding boxes, the circular field-of-view mask, the cheap threshold-based lung box
that the U-Net stage crops to, and the DeCoVNet input with the geometry that maps crop space
back to volume space (models.md §1.2). Arrays are (z, y, x) like ``CTVolume.hu``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.resample import (
    CUBIC_A,
    align_corner_coords,
    half_pixel_coords,
    interpolation_matrix,
    resize,
    sample_axis,
)

WINDOW_HU_MIN = -1200.0  # DeCoVNet window (models.md §1.2), also used for the U-Net and RML input
WINDOW_HU_MAX = 600.0
UINT8_MAX = 255
TARGET_SLICE_SPACING_MM = 1.0
DECOVNET_CROP_SHAPE_PX = (224, 336)  # (H, W) in-plane size of the DeCoVNet input
DECOVNET_MIN_SLICES = 2  # the temporal max-pool needs at least two slices
FOV_RADIUS_FRACTION = 253.0 / 512.0  # circular reconstruction FOV: radius 253 px on 512 x 512
FOV_CENTRE_FRACTION = 255.0 / 512.0  # centre (255, 255) on 512 x 512

# Coarse, threshold-based lung box (the U-Net stage only runs inside it).
COARSE_AIR_HU_MAX = -400.0  # air and aerated lung are below this
COARSE_STRIDE_PX = 4  # in-plane subsampling of the coarse search
COARSE_KEEP_FRACTION = 0.1  # keep internal-air components of at least this share of the largest
COARSE_MIN_VOLUME_ML = 20.0  # ignore internal air pockets smaller than this (bowel gas, noise)
COARSE_MARGIN_MM = 8.0  # margin added around the coarse box on every side

__all__ = [  # the resampling helpers keep being importable from here
    "CUBIC_A", "align_corner_coords", "half_pixel_coords", "interpolation_matrix", "resize",
    "sample_axis",
]

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------- windowing


def window(
    hu: npt.NDArray[np.floating], lo: float = WINDOW_HU_MIN, hi: float = WINDOW_HU_MAX
) -> FloatArray:
    """Map HU linearly from [lo, hi] to [0, 1] with clipping (float32)."""
    if hi <= lo:
        raise ValueError(f"window upper bound {hi} must exceed lower bound {lo}")
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def window_uint8(
    hu: npt.NDArray[np.floating], lo: float = WINDOW_HU_MIN, hi: float = WINDOW_HU_MAX
) -> npt.NDArray[np.uint8]:
    """The window scaled to 0..255 and truncated to uint8, as the original stores it."""
    return (window(hu, lo, hi) * np.float32(UINT8_MAX)).astype(np.uint8)


def hu_of_uint8_level(level: float, lo: float = WINDOW_HU_MIN, hi: float = WINDOW_HU_MAX) -> float:
    """The HU value that the uint8 window maps to ``level`` (e.g. 75 -> about -671 HU)."""
    return lo + level / UINT8_MAX * (hi - lo)


# --------------------------------------------------------------------------- z resampling


def z_resample_coords(
    n_slices: int, spacing_z_mm: float, target_mm: float = TARGET_SLICE_SPACING_MM
) -> npt.NDArray[np.float64]:
    """Source slice coordinates of slices ``target_mm`` apart covering the same z extent."""
    if spacing_z_mm <= 0 or target_mm <= 0:
        raise ValueError(f"spacings must be positive, got {spacing_z_mm} and {target_mm}")
    if n_slices < 1:
        raise ValueError("no slices to resample")
    n_out = int(np.floor((n_slices - 1) * spacing_z_mm / target_mm + 1e-6)) + 1
    return np.arange(n_out, dtype=np.float64) * (target_mm / spacing_z_mm)


def resample_z(
    volume: npt.NDArray,
    spacing_z_mm: float,
    target_mm: float = TARGET_SLICE_SPACING_MM,
    order: int = 1,
) -> npt.NDArray:
    """Resample axis 0 to ``target_mm`` slices (order 1 for images, 0 for masks)."""
    return sample_axis(
        volume, 0, z_resample_coords(volume.shape[0], spacing_z_mm, target_mm), order
    )


# --------------------------------------------------------------------------- boxes and FOV


@dataclass(frozen=True)
class Box:
    """A (z, y, x) half-open index box: [z0, z1) x [y0, y1) x [x0, x1)."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0

    def expanded(self, margin_zyx: tuple[int, int, int], bounds: tuple[int, int, int]) -> Box:
        """The box grown by a margin per axis, clipped to an array of shape ``bounds``."""
        mz, my, mx = margin_zyx
        return Box(
            max(0, self.z0 - mz),
            min(bounds[0], self.z1 + mz),
            max(0, self.y0 - my),
            min(bounds[1], self.y1 + my),
            max(0, self.x0 - mx),
            min(bounds[2], self.x1 + mx),
        )


def bounding_box(mask: npt.NDArray[np.bool_]) -> Box | None:
    """The tight box of the true voxels of a 3D mask, or None when it is empty."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {m.shape}")
    zs = np.flatnonzero(m.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    ys = np.flatnonzero(m.any(axis=(0, 2)))
    xs = np.flatnonzero(m.any(axis=(0, 1)))
    return Box(
        int(zs[0]), int(zs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    )


def circular_fov_mask(shape_yx: tuple[int, int]) -> BoolArray:
    """Pixels inside the scanner's circular reconstruction field (radius 253 of 512, scaled)."""
    h, w = shape_yx
    side = min(h, w)
    radius = FOV_RADIUS_FRACTION * side
    cy, cx = FOV_CENTRE_FRACTION * h, FOV_CENTRE_FRACTION * w
    yy = (np.arange(h, dtype=np.float64) - cy)[:, None]
    xx = (np.arange(w, dtype=np.float64) - cx)[None, :]
    return np.asarray(yy * yy + xx * xx <= radius * radius)


def coarse_lung_box(
    hu: npt.NDArray[np.floating], spacing_mm: tuple[float, float, float]
) -> Box | None:
    """Bounding box of the large internal air regions (the lungs), found by thresholds only.

    Air below -400 HU that does not touch an in-plane image border on its slice is internal air;
    its 3D components with at least 10% of the largest one's size (and 20 mL) are kept, and
    their box is grown by 8 mm. Runs at 1/4 in-plane resolution, so it costs well under a
    second for 300 slices. Returns None when no internal air is found.
    """
    vol = np.asarray(hu)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    s = COARSE_STRIDE_PX
    air = vol[:, ::s, ::s] < COARSE_AIR_HU_MAX
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(air, structure=in_plane)
    if n == 0:
        return None
    border = np.concatenate(
        [
            labels[:, 0, :].ravel(),
            labels[:, -1, :].ravel(),
            labels[:, :, 0].ravel(),
            labels[:, :, -1].ravel(),
        ]
    )
    outside = np.zeros(n + 1, dtype=bool)
    outside[np.unique(border)] = True
    outside[0] = True
    internal = ~outside[labels]
    comps, n_comp = ndimage.label(internal)
    if n_comp == 0:
        return None
    sizes = np.bincount(comps.ravel())[1:]
    voxel_ml = spacing_mm[0] * spacing_mm[1] * s * spacing_mm[2] * s / 1000.0
    keep_min = max(sizes.max() * COARSE_KEEP_FRACTION, COARSE_MIN_VOLUME_ML / voxel_ml)
    keep = np.concatenate([[False], sizes >= keep_min])
    if not keep.any():
        return None
    box = bounding_box(keep[comps])
    if box is None:  # pragma: no cover - keep has a true entry
        return None
    z, y, x = vol.shape
    full = Box(box.z0, box.z1, box.y0 * s, min(y, box.y1 * s), box.x0 * s, min(x, box.x1 * s))
    margin = (
        int(np.ceil(COARSE_MARGIN_MM / spacing_mm[0])),
        int(np.ceil(COARSE_MARGIN_MM / spacing_mm[1])),
        int(np.ceil(COARSE_MARGIN_MM / spacing_mm[2])),
    )
    return full.expanded(margin, (z, y, x))


# --------------------------------------------------------------------------- U-Net input

UNET_WORK_SHAPE_PX = (128, 192)  # (H, W) the lung box is resized to for the U-Net


def unet_input(
    hu: npt.NDArray[np.floating],
    box: Box,
    z_indices: npt.ArrayLike,
    work_shape_px: tuple[int, int] = UNET_WORK_SHAPE_PX,
) -> FloatArray:
    """U-Net input slices: the box's in-plane region of slices ``z_indices``, windowed to [0, 1]
    and resized (linear) to ``work_shape_px``; shape N x 1 x H x W."""
    idx = np.asarray(z_indices, dtype=np.intp)
    slab = np.asarray(hu)[idx, box.y0 : box.y1, box.x0 : box.x1]
    return np.ascontiguousarray(resize(window(slab), work_shape_px, order=1)[:, None])


def unet_target(
    mask: npt.NDArray[np.bool_],
    box: Box,
    z_indices: npt.ArrayLike,
    work_shape_px: tuple[int, int] = UNET_WORK_SHAPE_PX,
) -> npt.NDArray[np.int64]:
    """Training labels matching ``unet_input``: N x H x W class indices (0 background, 1 lung)."""
    idx = np.asarray(z_indices, dtype=np.intp)
    slab = np.asarray(mask, dtype=bool)[idx, box.y0 : box.y1, box.x0 : box.x1]
    return resize(slab, work_shape_px, order=0).astype(np.int64)


# --------------------------------------------------------------------------- DeCoVNet input


@dataclass(frozen=True)
class CropGeometry:
    """How a crop-space array (1-mm slices of ``box``, resized in-plane) maps to the volume.

    ``z_coords`` are the box-relative source slice coordinates of the crop's slices; the in-plane
    resize aligns the corners of the box with those of the crop (as ``scipy.ndimage.zoom``).
    """

    box: Box
    volume_shape: tuple[int, int, int]
    z_coords: npt.NDArray[np.float64]
    crop_shape: tuple[int, int, int]

    def to_volume(self, arr: npt.NDArray, order: int = 1, fill: float = 0.0) -> npt.NDArray:
        """Map an array covering the crop extent (any grid, e.g. a feature map) to the volume.

        The array's first and last samples per axis sit on the crop's first and last samples;
        values are resampled to the box voxels and pasted into a volume-shaped array that holds
        ``fill`` outside the box.
        """
        a = np.asarray(arr)
        if a.ndim != 3:
            raise ValueError(f"expected a 3D array, got shape {a.shape}")
        nz, ny, nx = self.box.shape
        t_crop = self.crop_shape[0]
        # box slice k -> crop slice coordinate -> array coordinate
        step = float(self.z_coords[1] - self.z_coords[0]) if len(self.z_coords) > 1 else 0.0
        crop_z = np.arange(nz) / step if step > 0 else np.zeros(nz)
        z_scale = (a.shape[0] - 1) / (t_crop - 1) if t_crop > 1 else 0.0
        out = a
        out = sample_axis(out, 2, align_corner_coords(a.shape[2], nx), order)
        out = sample_axis(out, 1, align_corner_coords(a.shape[1], ny), order)
        out = sample_axis(out, 0, crop_z * z_scale, order)
        full = np.full(self.volume_shape, fill, dtype=out.dtype)
        full[self.box.slices] = out
        return full


@dataclass(frozen=True)
class DeCoVNetInput:
    """The 2 x T x 224 x 336 float32 network input and its geometry."""

    array: FloatArray
    geometry: CropGeometry


def decovnet_input(
    hu: npt.NDArray[np.floating],
    lung_mask: npt.NDArray[np.bool_],
    spacing_z_mm: float,
    crop_shape_px: tuple[int, int] = DECOVNET_CROP_SHAPE_PX,
    apply_fov: bool = True,
) -> DeCoVNetInput:
    """Build the DeCoVNet input (models.md §1.2): [windowed image, lung mask] in the lung box.

    Steps: crop to the 3D lung bounding box; set pixels outside the circular FOV to the window
    minimum (square slices only); window [-1200, 600] HU to uint8 levels; resample z to 1 mm
    (linear for the image, nearest for the mask) and resize in-plane to 224 x 336 (cubic for
    the image, nearest for the mask), in-plane first (the steps commute); image levels / 255.
    Slices are repeated up to two when the lung extent is thinner than 2 mm.
    """
    vol = np.asarray(hu)
    mask = np.asarray(lung_mask, dtype=bool)
    if vol.shape != mask.shape or vol.ndim != 3:
        raise ValueError(f"volume {vol.shape} and lung mask {mask.shape} must be equal 3D shapes")
    box = bounding_box(mask)
    if box is None:
        raise ValueError("the lung mask is empty: nothing to crop")
    crop = vol[box.slices]
    img = window_uint8(crop).astype(np.float32)
    if apply_fov and vol.shape[1] == vol.shape[2]:
        inside = circular_fov_mask(vol.shape[1:])[box.slices[1], box.slices[2]]
        img[:, ~inside] = 0.0
    z_coords = z_resample_coords(box.shape[0], spacing_z_mm)
    if z_coords.size < DECOVNET_MIN_SLICES:
        z_coords = np.zeros(DECOVNET_MIN_SLICES) if box.shape[0] == 1 else np.array([0.0, 1.0])
    h, w = crop_shape_px
    # In-plane first: the separable steps commute, and the z step then runs on small slices.
    img = sample_axis(resize(img, (h, w), order=3), 0, z_coords, order=1)
    np.clip(img, 0.0, float(UINT8_MAX), out=img)
    img *= np.float32(1.0 / UINT8_MAX)
    m = sample_axis(resize(mask[box.slices], (h, w), order=0), 0, z_coords, order=0)
    m = m.astype(np.float32)
    array = np.stack([img, m]).astype(np.float32, copy=False)
    geometry = CropGeometry(
        box=box,
        volume_shape=(int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2])),
        z_coords=z_coords,
        crop_shape=(int(array.shape[1]), h, w),
    )
    return DeCoVNetInput(array=array, geometry=geometry)
