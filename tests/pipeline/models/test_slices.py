"""CNN-BERT slice selection, resamplers, set building and the RML input (models.md §2.2, §2.4)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.slices import (
    KINETICS_MEAN,
    KINETICS_STD,
    MIN_SPAN_TEST,
    MIN_SPAN_TRAIN,
    lung_fraction_per_slice,
    random_resample,
    rml_set,
    rml_slices,
    select_slice_range,
    sequential_sets,
    symmetric_resample,
)
from tests.pipeline.models.phantoms import Phantom


def test_symmetric_downsampling_examples_from_the_paper_code() -> None:
    assert symmetric_resample(50) == list(range(9, 41))
    assert symmetric_resample(64) == list(range(1, 64, 2))
    assert symmetric_resample(100) == list(range(4, 98, 3))
    assert symmetric_resample(32) == list(range(32))


def test_symmetric_upsampling_example() -> None:
    expected = [0, 1, 2, 3] + [i for i in range(4, 16) for _ in range(2)] + [16, 17, 18, 19]
    assert symmetric_resample(20) == expected
    assert symmetric_resample(1) == [0] * 32
    ten = symmetric_resample(10)
    assert len(ten) == 32 and sorted(set(ten)) == list(range(10))


def test_symmetric_offset_shifts_the_centre() -> None:
    assert symmetric_resample(64, offset=-1) == list(range(0, 63, 2))


@pytest.mark.parametrize(("n", "count"), [(50, 2), (64, 3), (100, 4), (130, 5), (32, 1), (20, 1)])
def test_sequential_set_counts(n: int, count: int) -> None:
    sets = sequential_sets(n)
    assert len(sets) == count
    for s in sets:
        assert len(s) == 32 and s == sorted(s) and 0 <= s[0] and s[-1] < n


def test_sequential_sets_end_with_the_central_block() -> None:
    sets = sequential_sets(100)
    assert sets[-1] == list(range(34, 66))
    assert sets[:3] == [symmetric_resample(100, offset=o) for o in (-2, -1, 0)]


@pytest.mark.parametrize("n", [5, 31, 33, 77])
def test_random_resample(n: int) -> None:
    rng = np.random.default_rng(n)
    idx = random_resample(n, rng)
    assert len(idx) == 32 and idx == sorted(idx)
    assert min(idx) >= 0 and max(idx) < n
    if n < 32:
        assert set(idx) == set(range(n))
    else:
        assert len(set(idx)) == 32


def test_slice_selection_adaptive_threshold() -> None:
    r = np.zeros(40)
    r[10:30] = np.concatenate([np.linspace(0.1, 1.0, 10), np.linspace(1.0, 0.1, 10)])
    first, stop = select_slice_range(r, MIN_SPAN_TRAIN)
    # >= 0.7 * max: slices 16..23, span 7 < 8; >= 0.6 * max: slices 15..24, span 9
    assert (first, stop) == (15, 25)
    assert select_slice_range(r, MIN_SPAN_TEST) == (16, 24)
    # a narrow peak: 0.7 gives a span < 8, so train lowers the threshold; test does not
    peak = np.zeros(40)
    peak[18:23] = [0.5, 0.9, 1.0, 0.9, 0.5]
    peak[14:18] = 0.35
    peak[23:27] = 0.35
    assert select_slice_range(peak, MIN_SPAN_TEST) == (19, 22)
    assert select_slice_range(peak, MIN_SPAN_TRAIN) == (14, 27)
    assert select_slice_range(np.zeros(7)) == (0, 7)


def test_slice_selection_on_a_lung_volume(phantom: Phantom) -> None:
    lungs = phantom.left | phantom.right
    fractions = lung_fraction_per_slice(lungs)
    first, stop = select_slice_range(fractions, MIN_SPAN_TRAIN)
    occupied = np.flatnonzero(fractions > 0)
    assert occupied[0] < first < stop <= occupied[-1] + 1
    assert stop - first - 1 >= 8
    assert np.all(fractions[first:stop] >= 0.1 * fractions.max())
    assert fractions[first:stop].argmax() + first == fractions.argmax()


def test_rml_channels_and_normalisation(phantom: Phantom) -> None:
    lungs = phantom.left | phantom.right
    z = phantom.lesion_centre_zyx[0]
    rml = rml_slices(phantom.volume.hu[z - 1 : z + 2], lungs[z - 1 : z + 2])
    assert rml.shape == (3, 3, 224, 224) and rml.dtype == np.float32
    mean = np.asarray(KINETICS_MEAN)
    std = np.asarray(KINETICS_STD)
    raw = rml[0] * std[0] + mean[0]
    mask = rml[1] * std[1] + mean[1]
    lung = rml[2] * std[2] + mean[2]
    assert set(np.round(np.unique(mask), 3)) >= {0.0, 1.0}
    inside = mask > 1.0 - 1e-5
    np.testing.assert_allclose(lung[inside], raw[inside], atol=1e-5)
    assert np.abs(lung[mask < 1e-6]).max() < 1e-5
    one_set = rml_set(rml, [0, 0, 1, 2])
    assert one_set.shape == (3, 4, 224, 224)
    np.testing.assert_array_equal(one_set[:, 1], rml[:, 0])
