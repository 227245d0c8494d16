"""Lesion insertion keeps lesions inside the lungs and changes only lung voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.insertion import insert_lesions
from training.synthetic import generate_case

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "covid-ct-md"


@pytest.mark.parametrize("kind", ["covid", "cap"])
def test_insertion_into_phantom_stays_in_lungs(kind: str) -> None:
    case = generate_case(31, kind="normal", matrix=96, slice_spacing_mm=4.0)
    result = insert_lesions(case.hu, case.spacing_mm, case.lung_left, case.lung_right, seed=2,
                            kind=kind)
    assert result.lesion_mask.any()
    assert not (result.lesion_mask & ~case.lungs).any()
    changed = result.hu != case.hu
    assert not (changed & ~case.lungs).any()
    assert float(np.median(result.hu[result.lesion_mask])) > float(
        np.median(case.hu[result.lesion_mask])) + 150
    assert case.hu is not result.hu  # the input is not modified in place


def test_insertion_rejects_bad_input() -> None:
    hu = np.zeros((4, 8, 8), dtype=np.float32)
    empty = np.zeros_like(hu, dtype=bool)
    with pytest.raises(ValueError):
        insert_lesions(hu, (1, 1, 1), empty, empty, seed=0)
    with pytest.raises(ValueError):
        insert_lesions(hu, (1, 1, 1), empty, empty, seed=0, kind="mass")


@pytest.mark.slow
def test_insertion_into_real_study_inside_morphological_lungs() -> None:
    from pipeline.series import read_series
    from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
    from training.insertion import insert_into_volume

    folder = DATA / "series" / "CAP" / "cap002"
    volume = read_series(sorted(folder.iterdir()), repair_uids=True)
    lungs = MorphologicalLungSegmenter().segment(volume)
    new_volume, lesion = insert_into_volume(volume, lungs, seed=5, kind="covid")
    assert lesion.any()
    assert not (lesion & ~lungs.both).any()
    assert new_volume.hu.shape == volume.hu.shape
    assert not np.array_equal(new_volume.hu, volume.hu)
