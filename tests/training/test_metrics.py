"""Evaluation metrics, in particular DeCoVNet's lesion hit on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import binary_scores, dice, lesion_hit, median_voxel, roc_auc, roc_curve


def _box(shape, z, y, x):
    m = np.zeros(shape, dtype=bool)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return m


def test_median_voxel_is_the_middle_of_np_where() -> None:
    m = np.zeros((3, 4, 4), dtype=bool)
    m[0, 0, 0] = m[1, 2, 2] = m[2, 3, 3] = True
    assert median_voxel(m) == (1, 2, 2)
    assert median_voxel(np.zeros((2, 2, 2), dtype=bool)) is None


def test_hit_when_prediction_centre_inside_any_truth_component() -> None:
    shape = (20, 20, 20)
    truth = _box(shape, (2, 6), (2, 6), (2, 6)) | _box(shape, (12, 18), (12, 18), (12, 18))
    # overlaps only the second lesion, centred in it
    assert lesion_hit(_box(shape, (13, 17), (13, 17), (13, 17)), truth)
    # a larger prediction whose median voxel still falls in the second lesion
    assert lesion_hit(_box(shape, (10, 19), (12, 18), (12, 18)), truth)


def test_miss_cases() -> None:
    shape = (20, 20, 20)
    truth = _box(shape, (2, 6), (2, 6), (2, 6))
    assert not lesion_hit(np.zeros(shape, dtype=bool), truth)  # empty prediction
    assert not lesion_hit(_box(shape, (10, 15), (10, 15), (10, 15)), truth)  # elsewhere
    # overlapping prediction whose median voxel lies outside the lesion: still a miss
    assert not lesion_hit(_box(shape, (0, 20), (0, 20), (0, 20)), truth)
    with pytest.raises(ValueError):
        lesion_hit(np.zeros((2, 2, 2), dtype=bool), truth)


def test_dice_values() -> None:
    a = _box((4, 4, 4), (0, 2), (0, 4), (0, 4))
    b = _box((4, 4, 4), (1, 3), (0, 4), (0, 4))
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_roc_auc_and_scores() -> None:
    labels = [1, 1, 0, 0, 1, 0]
    assert roc_auc(labels, [0.9, 0.8, 0.1, 0.2, 0.7, 0.3]) == 1.0
    assert roc_auc(labels, [0.1, 0.2, 0.9, 0.8, 0.3, 0.7]) == 0.0
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5
    fpr, tpr = roc_curve(labels, [0.9, 0.8, 0.1, 0.2, 0.7, 0.3])
    assert fpr[0] == 0.0 and tpr[-1] == 1.0
    s = binary_scores(labels, [0.9, 0.4, 0.1, 0.6, 0.7, 0.3])
    assert (s.tp, s.fp, s.tn, s.fn) == (2, 1, 2, 1)
    assert s.sensitivity == pytest.approx(2 / 3) and s.f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.2, 0.3])
