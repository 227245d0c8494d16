"""Synthetic phantom generator: shapes, HU ranges, masks, determinism, lesion placement."""

from __future__ import annotations

import numpy as np
import pytest

from training.synthetic import CASE_KINDS, generate_case
from training.synthetic.hu import GGO_HU_RANGE


@pytest.mark.parametrize("kind", CASE_KINDS)
def test_case_shapes_masks_and_labels(kind: str) -> None:
    case = generate_case(11, kind=kind, matrix=96, slice_spacing_mm=4.0, noise_sd_hu=10.0)
    nz, ny, nx = case.hu.shape
    assert (ny, nx) == (96, 96)
    assert case.hu.dtype == np.float32
    assert case.spacing_mm[0] == pytest.approx(4.0)
    assert case.lung_left.shape == case.hu.shape and case.lesion_mask.shape == case.hu.shape
    assert case.lung_left.sum() > 1000 and case.lung_right.sum() > 1000
    assert not (case.lung_left & case.lung_right).any()
    # left lung (patient left) lies at larger x (DICOM columns towards the patient's left)
    assert np.nonzero(case.lung_left)[2].mean() > np.nonzero(case.lung_right)[2].mean()
    assert not (case.lesion_mask & ~case.lungs).any()
    assert case.label == ("covid19" if kind == "covid" else "non-covid")
    if kind == "normal":
        assert not case.lesion_mask.any()
    else:
        assert case.lesion_mask.any()


def test_hu_ranges_of_tissues() -> None:
    case = generate_case(5, kind="normal", matrix=128, slice_spacing_mm=3.0)
    assert case.hu.min() >= -1024 and case.hu.max() <= 3071
    corner = case.hu[:, :8, :8]
    assert abs(float(np.median(corner)) + 1000) < 40  # outside air
    lung_median = float(np.median(case.hu[case.lungs]))
    assert -900 < lung_median < -700
    assert case.hu.max() > 300  # bone present


def test_covid_lesions_are_ground_glass_or_denser_and_peripheral() -> None:
    case = generate_case(7, kind="covid", matrix=128, slice_spacing_mm=3.0, covid_severity=0.8)
    lesion_hu = float(np.median(case.hu[case.lesion_mask]))
    assert GGO_HU_RANGE[0] - 100 < lesion_hu < 60
    # lesions sit mostly near the lung border (subpleural)
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(case.lungs, sampling=case.spacing_mm)
    assert float(np.median(depth[case.lesion_mask])) < 25.0


def test_deterministic_per_seed() -> None:
    a = generate_case(3, kind="covid", matrix=64, slice_spacing_mm=5.0)
    b = generate_case(3, kind="covid", matrix=64, slice_spacing_mm=5.0)
    c = generate_case(4, kind="covid", matrix=64, slice_spacing_mm=5.0)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_case(1, kind="flu")
    with pytest.raises(ValueError):
        generate_case(1, kind="normal", matrix=16)
