"""Per-lung measurements: volume, mean attenuation and lesion burden.

Lung volumes are measured on the whole lung (lesions included), so the numbers do not depend
on how the SEG writer splits lungs and lesions into non-overlapping segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pipeline.types import CTVolume, Lesion, LungMask, LungStats


def mean_hu(volume: CTVolume, mask: npt.NDArray[np.bool_]) -> float:
    """Mean HU inside ``mask``; NaN for an empty mask."""
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    count = int(np.count_nonzero(mask))
    if count == 0:
        return float("nan")
    return float(volume.hu[mask].sum(dtype=np.float64) / count)


def lesion_union(
    shape: tuple[int, int, int], lesions: Sequence[Lesion]
) -> npt.NDArray[np.bool_]:
    """All lesion voxels of a study as one mask."""
    union = np.zeros(shape, dtype=bool)
    for lesion in lesions:
        if lesion.mask.shape != shape:
            raise ValueError(f"lesion {lesion.number} mask shape {lesion.mask.shape} != {shape}")
        union |= lesion.mask
    return union


def lung_stats(
    volume: CTVolume, lungs: LungMask, lesions: Sequence[Lesion] | None = None
) -> tuple[LungStats, LungStats]:
    """(left, right) statistics; lesion burden is None when localization did not run.

    Burden is the percentage of the lung's voxels covered by a lesion (0.0 when localization
    ran and found nothing).
    """
    union = lesion_union(volume.shape, lesions) if lesions is not None else None
    results = []
    for side, mask in (("left", lungs.left), ("right", lungs.right)):
        count = int(np.count_nonzero(mask))
        burden: float | None = None
        if union is not None:
            burden = 100.0 * int(np.count_nonzero(union & mask)) / count if count else 0.0
        results.append(
            LungStats(
                side=side,
                volume_ml=count * volume.voxel_volume_ml,
                mean_hu=mean_hu(volume, mask),
                lesion_burden_percent=burden,
            )
        )
    return results[0], results[1]
