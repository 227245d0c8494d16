"""Separating joined lungs, shared by both lung stages (U-Net and morphological).

A lung mask whose two lungs touch (at the anterior junction, or through a thin bridge left by
the segmentation) is split by in-plane erosion: the shallowest erosion that leaves two large
parts is found, then every voxel of the mask goes to the nearest part. When no erosion up to
15 mm separates it, the caller cuts it at a column (``cut_at_column``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

SPLIT_MAX_EROSION_MM = 15.0  # deepest in-plane erosion tried to separate joined lungs
SPLIT_MIN_FRACTION = 0.25  # both parts must hold this share of the larger one to count

IN_SLICE_CROSS = np.zeros((3, 3, 3), dtype=bool)  # 4-connectivity within each slice only
IN_SLICE_CROSS[1] = ndimage.generate_binary_structure(2, 1)

Mask = npt.NDArray[np.bool_]


def _two_large_parts(eroded: Mask) -> npt.NDArray[np.uint8] | None:
    """Seeds 1 and 2 on the two largest components, when the second is large enough."""
    labels, count = ndimage.label(eroded)
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    first, second = np.argsort(sizes)[::-1][:2]
    if sizes[second] < SPLIT_MIN_FRACTION * sizes[first]:
        return None
    seeds = np.zeros(eroded.shape, dtype=np.uint8)
    seeds[labels == first] = 1
    seeds[labels == second] = 2
    return seeds


def separate_joined(mask: Mask, spacing_mm: tuple[float, float, float]) -> list[Mask] | None:
    """Two parts of one joined region by in-plane erosion and regrowth; None when it fails
    (an empty mask, or no erosion up to 15 mm leaving two parts of comparable size).

    The smallest erosion depth is found by bisection over an in-plane distance map (depth > k
    equals k erosions with the in-slice cross), so only a few 3-D labelings are needed; the
    parts then grow back over the eroded shell, each voxel to the nearest part.
    """
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    box = found[0]
    max_depth = max(1, int(round(SPLIT_MAX_EROSION_MM / min(spacing_mm[1], spacing_mm[2]))))
    padded = np.pad(mask[box], 1)
    depth = ndimage.distance_transform_cdt(padded, metric=IN_SLICE_CROSS)
    # The deepest erosion that still leaves two parts (at most max_depth): for lungs usually
    # max_depth itself; smaller regions vanish under it, so step down until two parts appear.
    high, best = max_depth, None
    while high > 0:
        best = _two_large_parts(depth > high)
        if best is not None:
            break
        high -= 1
    if best is None:
        return None
    low = 0  # depth > high splits; depth > 0 is the joined mask
    while high - low > 1:
        middle = (low + high) // 2
        seeds = _two_large_parts(depth > middle)
        if seeds is None:
            low = middle
        else:
            high, best = middle, seeds
    grown = assign_nearest(best, padded, spacing_mm)[1:-1, 1:-1, 1:-1]
    parts = []
    for value in (1, 2):
        part = np.zeros(mask.shape, dtype=bool)
        part[box] = grown == value
        parts.append(part)
    return parts


def assign_nearest(
    seeds: npt.NDArray[np.uint8], mask: Mask, spacing_mm: tuple[float, float, float]
) -> npt.NDArray[np.uint8]:
    """Give every voxel of ``mask`` the label of its nearest seed (Euclidean, in mm).

    The nearest-seed map is computed on a grid halved in-plane, which is four times cheaper
    and moves the boundary between the parts by at most one coarse pixel.
    """
    coarse = seeds[:, ::2, ::2]
    _, nearest = ndimage.distance_transform_edt(
        coarse == 0, sampling=(spacing_mm[0], 2 * spacing_mm[1], 2 * spacing_mm[2]),
        return_indices=True,
    )
    field = coarse[tuple(nearest)]
    field = np.repeat(np.repeat(field, 2, axis=1), 2, axis=2)[:, : mask.shape[1], : mask.shape[2]]
    labels = np.where(seeds > 0, seeds, field)
    labels[~mask] = 0
    return labels


def cut_at_column(mask: Mask, column_weights: npt.NDArray[np.float64]) -> list[Mask]:
    """``mask`` cut into (columns before, columns from) the weighted mean column."""
    if column_weights.sum() == 0:
        column_weights = mask.sum(axis=(0, 1)).astype(np.float64)
    if column_weights.sum() == 0:
        return [mask.copy(), np.zeros_like(mask)]
    centre = int(round(float(np.average(np.arange(mask.shape[2]), weights=column_weights))))
    first = mask.copy()
    first[:, :, centre:] = False
    return [first, mask & ~first]
