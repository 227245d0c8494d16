"""Insert synthetic COVID-like lesions into real chest CT, inside a lung mask.

Real studies (``/work/shared/data/covid-ct-md``) have real anatomy and noise but only slice-level
labels; inserting lesions with known voxel masks gives real-background cases with voxel ground
truth for training and for testing localization.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from pipeline.types import CTVolume, LungMask
from training.synthetic import lesions

logger = logging.getLogger(__name__)

NOISE_PATCH_HU_MAX = -500.0  # lung voxels below this estimate the scanner noise
INSERTION_KINDS = ("covid", "cap")


@dataclass(frozen=True)
class InsertionResult:
    """The modified HU volume, the mask of inserted lesions, and what was inserted."""

    hu: npt.NDArray[np.float32]
    lesion_mask: npt.NDArray[np.bool_]
    lesion_kinds: tuple[str, ...]


def insert_lesions(
    hu: npt.NDArray[np.floating],
    spacing_mm: tuple[float, float, float],
    lung_left: npt.NDArray[np.bool_],
    lung_right: npt.NDArray[np.bool_],
    seed: int,
    kind: str = "covid",
    severity: float | None = None,
) -> InsertionResult:
    """Blend lesions of ``kind`` ("covid": peripheral GGOs/consolidations; "cap": one lobar
    consolidation) into a copy of ``hu`` inside the given lungs, then add noise matched to the
    scan's own lung noise so that the inserted region is not conspicuously smooth.
    """
    if kind not in INSERTION_KINDS:
        raise ValueError(f"unknown insertion kind {kind!r}; expected one of {INSERTION_KINDS}")
    vol = np.array(hu, dtype=np.float32, copy=True)
    if lung_left.shape != vol.shape or lung_right.shape != vol.shape:
        raise ValueError("lung masks must have the volume's shape")
    if not (lung_left.any() or lung_right.any()):
        raise ValueError("empty lung mask: no place for a lesion")
    rng = np.random.default_rng(seed)
    lungs = (np.asarray(lung_right, dtype=bool), np.asarray(lung_left, dtype=bool))
    before = vol.copy()
    if kind == "covid":
        mask, specs = lesions.covid_lesions(vol, lungs, spacing_mm, rng, severity)
    else:
        nz = vol.shape[0]
        z_has = np.nonzero((lungs[0] | lungs[1]).any(axis=(1, 2)))[0]
        lung_t = np.clip((np.arange(nz) - z_has[0]) / max(z_has[-1] - z_has[0], 1), 0, 1)
        mask, specs = lesions.lobar_consolidation(vol, lungs, lung_t.astype(np.float32),
                                                  spacing_mm, rng)
    changed = vol != before
    noise_sd = _lung_noise_sd(before, lungs[0] | lungs[1])
    if changed.any() and noise_sd > 0:
        vol[changed] += rng.normal(0.0, noise_sd, int(changed.sum())).astype(np.float32)
    mask &= lungs[0] | lungs[1]
    logger.info("inserted %d %s lesion part(s), %d voxels", len(specs), kind, int(mask.sum()))
    return InsertionResult(hu=vol, lesion_mask=mask, lesion_kinds=tuple(s.kind for s in specs))


def insert_into_volume(
    volume: CTVolume, lungs: LungMask, seed: int, kind: str = "covid",
    severity: float | None = None,
) -> tuple[CTVolume, npt.NDArray[np.bool_]]:
    """:func:`insert_lesions` on a ``CTVolume``; returns a new volume and the lesion mask."""
    result = insert_lesions(volume.hu, volume.spacing_mm, lungs.left, lungs.right, seed, kind,
                            severity)
    return replace(volume, hu=result.hu), result.lesion_mask


def _lung_noise_sd(hu: npt.NDArray[np.float32], lung: npt.NDArray[np.bool_]) -> float:
    """Robust estimate of the voxel noise from neighbouring-voxel differences in the lungs."""
    diff = np.diff(hu, axis=2)
    valid = lung[:, :, 1:] & lung[:, :, :-1] & (hu[:, :, 1:] < NOISE_PATCH_HU_MAX)
    values = diff[valid]
    if values.size < 100:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad / np.sqrt(2.0)
