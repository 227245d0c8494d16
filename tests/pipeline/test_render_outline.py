"""The overlay's outline is scipy.ndimage's erosion: the same band the hand-written
4-neighbour erosion (kept here as the reference) drew before."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.writers import render


def _reference_erode(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The former hand-written erosion: a pixel stays when it and its 4 neighbours are set;
    outside the image is background."""
    p = np.pad(mask, 1, mode="constant", constant_values=False)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _reference_outline(mask: npt.NDArray[np.bool_], thickness: int) -> npt.NDArray[np.bool_]:
    eroded = mask
    for _ in range(thickness):
        eroded = _reference_erode(eroded)
    return mask & ~eroded


def test_a_square_gets_a_one_pixel_ring_and_touching_the_border_counts_as_edge() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    ring = mask.copy()
    ring[2:5, 2:5] = False
    assert np.array_equal(render.outline(mask), ring)
    full = np.ones((4, 5), dtype=bool)
    expected = full.copy()
    expected[1:3, 1:4] = False
    assert np.array_equal(render.outline(full), expected)


@pytest.mark.parametrize("thickness", [1, 2, 3])
def test_outline_equals_the_hand_written_one_on_random_blobs(thickness: int) -> None:
    rng = np.random.default_rng(13)
    yy, xx = np.mgrid[:64, :80]
    for _ in range(20):
        cy, cx, r = rng.uniform(0, 64), rng.uniform(0, 80), rng.uniform(3, 30)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) | (rng.random((64, 80)) < 0.3)
        assert np.array_equal(render.outline(mask, thickness), _reference_outline(mask, thickness))
        assert np.array_equal(render.erode(mask), _reference_erode(mask))


def test_thickness_and_iterations_below_one_are_refused() -> None:
    mask = np.ones((3, 3), dtype=bool)
    with pytest.raises(ValueError, match="thickness"):
        render.outline(mask, 0)
    with pytest.raises(ValueError, match="iterations"):
        render.erode(mask, 0)
