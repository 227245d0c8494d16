"""Tell vessels, airway walls and the hilum apart from lesions among localizer candidates.

Hilar vessels and bronchovascular bundles are dense, branching tubes that leave the
mediastinum; an activation map that fires near the hilum turns them into "lesions". Two
measurements per candidate component, made only in its own padded box (cheap):

- ``tube_share``: the share of its voxels on a bright tubular ridge, from scikit-image's Sato
  filter per axial slice (HU scaled to 0..1 over [-1000, 200], ridge widths ~1.5-4 mm); a
  voxel is on a ridge when the filter response exceeds ``RIDGE_MIN``;
- ``hilar_share``: the share of its voxels within ``HILUM_MM`` of the mediastinum (per image
  row, the gap between the right lung's medial edge and the left lung's).

A candidate is a vessel when most of it is tubular (``tube_share >= TUBE_ONLY_SHARE``), or
when it lies at the hilum and much of it is tubular (``hilar_share >= HILAR_SHARE`` and
``tube_share >= HILAR_TUBE_SHARE``). Peripheral ground glass and consolidation are blobs or
sheets, not ridges, and COVID-19 findings are rarely hilar. The thresholds were chosen on the
false lesions of the real normal002 study and on synthetic vessel trees (see the evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.filters import sato

RIDGE_HU = (-1000.0, 200.0)  # window mapped to 0..1 before the ridge filter
RIDGE_SIGMAS_MM = (1.0, 2.0)  # Gaussian scales: vessel radii ~1.5-4 mm
MAX_SLICES = 8  # slices measured per candidate (evenly spaced): bounds the cost
RIDGE_MIN = 0.08  # Sato response (window units) counted as a bright ridge
TUBE_ONLY_SHARE = 0.6
HILAR_SHARE = 0.5
HILAR_TUBE_SHARE = 0.25
HILUM_MM = 20.0
PAD_MM = 6.0


@dataclass(frozen=True)
class ShapeFacts:
    """What the filter measured on one candidate."""

    tube_share: float
    hilar_share: float

    @property
    def is_vessel(self) -> bool:
        if self.tube_share >= TUBE_ONLY_SHARE:
            return True
        return self.hilar_share >= HILAR_SHARE and self.tube_share >= HILAR_TUBE_SHARE


def padded_region(
    region: tuple[slice, ...], shape: tuple[int, ...], pad_px: tuple[int, int, int]
) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - p), min(n, s.stop + p))
        for s, p, n in zip(region, pad_px, shape, strict=True)
    )


def tube_share(
    hu: npt.NDArray[np.floating], part: npt.NDArray[np.bool_], pixel_mm: float
) -> float:
    """Share of ``part`` voxels on a bright tubular ridge (Sato, per axial slice)."""
    lo, hi = RIDGE_HU
    scaled = np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    sigmas = [s / pixel_mm for s in RIDGE_SIGMAS_MM]
    ridge = np.zeros(part.shape, dtype=bool)
    for z in sampled_slices(part):
        response = sato(scaled[z], sigmas=sigmas, black_ridges=False, mode="reflect")
        ridge[z] = response > RIDGE_MIN
    total = int(part[sampled_slices(part)].sum())
    return float((ridge & part).sum()) / total if total else 0.0


def sampled_slices(part: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Up to ``MAX_SLICES`` evenly spaced slices among those the candidate occupies."""
    occupied = np.flatnonzero(part.any(axis=(1, 2)))
    if occupied.size <= MAX_SLICES:
        return occupied
    return occupied[np.linspace(0, occupied.size - 1, MAX_SLICES).round().astype(np.intp)]


def mediastinum_rows(
    left: npt.NDArray[np.bool_], right: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Per slice and row, the columns between the two lungs' medial edges.

    The left lung lies at higher column index than the right one in LPS-ordered arrays; when
    the orientation is flipped, the gap is still the columns between the two lungs.
    """
    ny, nx = left.shape[-2:]
    cols = np.arange(nx)
    out = np.zeros(left.shape, dtype=bool)
    has_l, has_r = left.any(axis=-1), right.any(axis=-1)
    both = has_l & has_r
    if not both.any():
        return out
    l_min = np.where(has_l, np.argmax(left, axis=-1), nx)
    l_max = np.where(has_l, nx - 1 - np.argmax(left[..., ::-1], axis=-1), -1)
    r_min = np.where(has_r, np.argmax(right, axis=-1), nx)
    r_max = np.where(has_r, nx - 1 - np.argmax(right[..., ::-1], axis=-1), -1)
    left_high = l_min > r_max
    lo = np.where(left_high, r_max, l_max)
    hi = np.where(left_high, l_min, r_min)
    gap = both & (hi > lo)
    out[:] = (cols > lo[..., None]) & (cols < hi[..., None]) & gap[..., None]
    return out


def hilar_share(
    part: npt.NDArray[np.bool_],
    left: npt.NDArray[np.bool_],
    right: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
) -> float:
    """Share of ``part`` voxels within ``HILUM_MM`` (in-plane) of the mediastinal gap."""
    zs = sampled_slices(part)
    mediastinum = mediastinum_rows(left[zs], right[zs])
    near = np.zeros(part.shape, dtype=bool)
    for i, z in enumerate(zs):
        if mediastinum[i].any():
            distance = ndimage.distance_transform_edt(~mediastinum[i], sampling=spacing_mm[1:])
            near[z] = distance <= HILUM_MM
    total = int(part[zs].sum())
    return float((near & part).sum()) / total if total else 0.0


def shape_facts(
    hu: npt.NDArray[np.floating],
    component: npt.NDArray[np.bool_],
    left: npt.NDArray[np.bool_],
    right: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    region: tuple[slice, ...] | None = None,
) -> ShapeFacts:
    """Measure one candidate; the arrays are whole slices (z range of the candidate).

    ``region`` is the candidate's bounding box in those arrays when the caller knows it.
    """
    if region is None:
        found = ndimage.find_objects(component.astype(np.uint8))
        if not found or found[0] is None:
            return ShapeFacts(0.0, 0.0)
        region = found[0]
    pixel_mm = min(spacing_mm[1], spacing_mm[2])
    pad = int(np.ceil(PAD_MM / pixel_mm))
    box = padded_region(region, component.shape, (0, pad, pad))
    return ShapeFacts(
        tube_share=tube_share(hu[box], component[box], pixel_mm),
        hilar_share=hilar_share(component, left, right, spacing_mm),
    )
