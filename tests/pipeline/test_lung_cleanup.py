"""Lung masks stay off the trachea on the real top slices of P002 (both lung stages)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from pipeline.stages.lung_unet import UNetLungSegmenter
from pipeline.types import CTVolume, LungMask

pytestmark = pytest.mark.slow

TOP_MM = 24.0  # the slices of P002 above and at the apices, where the trachea stands alone


def _trachea_on_top_slices(volume: CTVolume) -> dict[int, npt.NDArray[np.bool_]]:
    """Per top slice: the dark, tube-sized, midline air component not touching the border."""
    cranial_last = volume.direction[2, 2] >= 0
    count = int(TOP_MM / volume.spacing_mm[0])
    zs = range(volume.shape[0] - count, volume.shape[0]) if cranial_last else range(count)
    pixel_mm2 = volume.spacing_mm[1] * volume.spacing_mm[2]
    found: dict[int, npt.NDArray[np.bool_]] = {}
    for z in zs:
        labels, n = ndimage.label(volume.hu[z] < -900)
        border = set(np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        best: tuple[float, npt.NDArray[np.bool_]] | None = None
        for index in range(1, n + 1):
            comp = labels == index
            cols = np.nonzero(comp)[1]
            centre_mm = abs(cols.mean() - volume.shape[2] / 2) * volume.spacing_mm[2]
            if index not in border and 80 < comp.sum() * pixel_mm2 < 700 and centre_mm < 40:
                if best is None or centre_mm < best[0]:  # closest to the midline
                    best = (centre_mm, comp)
        if best is not None:
            found[z] = ndimage.binary_dilation(best[1], iterations=2)
    return found


def _overlap(mask: LungMask, trachea: dict[int, npt.NDArray[np.bool_]]) -> dict[int, int]:
    both = mask.both
    return {z: int((both[z] & region).sum()) for z, region in trachea.items()}


def test_unet_lungs_exclude_the_trachea_on_real_top_slices(
    covid_volume: CTVolume, covid_lungs: LungMask
) -> None:
    trachea = _trachea_on_top_slices(covid_volume)
    assert len(trachea) >= 8, "the trachea is visible on P002's top slices"
    raw = UNetLungSegmenter(device="cpu", cleanup=False).segment(covid_volume)
    assert sum(_overlap(raw, trachea).values()) > 500  # the U-Net alone takes the trachea in
    cleaned = UNetLungSegmenter(device="cpu").segment(covid_volume)
    assert _overlap(cleaned, trachea) == dict.fromkeys(trachea, 0)
    assert _overlap(covid_lungs, trachea) == dict.fromkeys(trachea, 0)  # morphological stage
    assert cleaned.left.sum() > 0.9 * raw.left.sum() and cleaned.right.sum() > 0.9 * raw.right.sum()
