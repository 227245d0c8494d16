"""Weight-free lungs: a synthetic phantom with known masks, then the real COVID-CT-MD studies."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from pipeline.series import volume_from_array
from pipeline.stages.lung_morphology import (
    ALGORITHM_NAME,
    MorphologicalLungSegmenter,
    block_any,
    working_factor,
)
from pipeline.types import CTVolume, LungMask
from tests.pipeline.conftest import Phantom, dice, make_phantom

FEET_FIRST_FLIPPED_X = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])


def _centroid_x_lps(volume: CTVolume, mask: np.ndarray) -> float:
    return float(volume.index_to_lps(np.argwhere(mask).mean(axis=0))[0, 0])


def test_phantom_lungs_match_the_truth_and_left_is_patient_left(
    chest_phantom: Phantom, chest_phantom_lungs: LungMask
) -> None:
    lungs = chest_phantom_lungs
    assert dice(lungs.left, chest_phantom.left) > 0.97
    assert dice(lungs.right, chest_phantom.right) > 0.97
    assert not (lungs.left & lungs.right).any()
    assert _centroid_x_lps(chest_phantom.volume, lungs.left) > 0 > _centroid_x_lps(
        chest_phantom.volume, lungs.right
    )


def test_vessels_inside_the_lungs_are_filled(
    chest_phantom: Phantom, chest_phantom_lungs: LungMask
) -> None:
    # Vessel voxels well inside a lung (a vessel touching the pleura joins the body in-plane).
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    core = ndimage.binary_erosion(
        chest_phantom.left | chest_phantom.right, structure=in_plane, iterations=8
    )
    vessels = core & (chest_phantom.volume.hu > 0.0)
    assert vessels.sum() > 100
    # Near the lung poles the reduced grid can merge a vessel with the pleura: allow 3 %.
    assert (chest_phantom_lungs.both & vessels).sum() > 0.97 * vessels.sum()


def test_trachea_above_the_carina_is_excluded(
    chest_phantom: Phantom, chest_phantom_lungs: LungMask
) -> None:
    assert chest_phantom.trachea.sum() > 1000
    assert not (chest_phantom_lungs.both & chest_phantom.trachea).any()


def test_joined_lungs_are_separated_at_the_anterior_junction() -> None:
    phantom = make_phantom(joined=True)
    labels, count = ndimage.label(phantom.left | phantom.right | phantom.bridge)
    assert count == 1  # the drawn lungs are one connected region
    lungs = MorphologicalLungSegmenter().segment(phantom.volume)
    outside_bridge = ~phantom.bridge
    assert dice(lungs.left & outside_bridge, phantom.left) > 0.97
    assert dice(lungs.right & outside_bridge, phantom.right) > 0.97


def test_orientation_does_not_swap_left_and_right() -> None:
    phantom = make_phantom(direction=FEET_FIRST_FLIPPED_X)
    lungs = MorphologicalLungSegmenter().segment(phantom.volume)
    assert dice(lungs.left, phantom.left) > 0.97
    assert dice(lungs.right, phantom.right) > 0.97
    # In this orientation patient-left lies at LOW column indices.
    columns = np.argwhere(lungs.left)[:, 2].mean(), np.argwhere(lungs.right)[:, 2].mean()
    assert columns[0] < columns[1]


def test_reduced_resolution_matches_full_resolution() -> None:
    phantom = make_phantom(shape=(24, 256, 256), spacing=(6.0, 0.6, 0.6))
    reduced = MorphologicalLungSegmenter().segment(phantom.volume)
    full = MorphologicalLungSegmenter(work_pixel_spacing_mm=0.1).segment(phantom.volume)
    assert working_factor(phantom.volume.spacing_mm, 1.2) == 2
    assert dice(reduced.left, full.left) > 0.98
    assert dice(reduced.right, full.right) > 0.98


def test_no_lungs_gives_empty_masks() -> None:
    phantom = make_phantom(shape=(12, 96, 96), spacing=(5.0, 2.0, 2.0))
    solid = phantom.volume.hu.copy()
    solid[phantom.left | phantom.right | phantom.trachea | phantom.bronchi] = 40.0
    volume = volume_from_array(solid, phantom.volume.spacing_mm, phantom.volume.origin_lps)
    lungs = MorphologicalLungSegmenter().segment(volume)
    assert not lungs.left.any() and not lungs.right.any()


def test_info_and_block_pooling() -> None:
    segmenter = MorphologicalLungSegmenter()
    assert segmenter.info.name == ALGORITHM_NAME and segmenter.info.sha256 == ""
    mask = np.zeros((1, 5, 5), dtype=bool)
    mask[0, 4, 4] = True
    pooled = block_any(mask, 2)
    assert pooled.shape == (1, 3, 3) and pooled[0, 2, 2] and pooled.sum() == 1
    with pytest.raises(ValueError):
        MorphologicalLungSegmenter(work_pixel_spacing_mm=0.0)


@pytest.mark.slow
def test_covid_study_lungs_are_physiological_and_on_the_right_sides(
    covid_volume: CTVolume,
) -> None:
    started = time.perf_counter()
    lungs = MorphologicalLungSegmenter().segment(covid_volume)
    elapsed = time.perf_counter() - started
    left_ml = lungs.left.sum() * covid_volume.voxel_volume_ml
    right_ml = lungs.right.sum() * covid_volume.voxel_volume_ml
    print(f"P002 lungs: left {left_ml:.0f} mL, right {right_ml:.0f} mL, {elapsed:.2f} s")
    assert 2000.0 < left_ml + right_ml < 8000.0
    assert 700.0 < left_ml < 4000.0 and 700.0 < right_ml < 4000.0
    assert right_ml > left_ml  # the right lung is the larger one (three lobes, no heart)
    assert _centroid_x_lps(covid_volume, lungs.left) > 0 > _centroid_x_lps(
        covid_volume, lungs.right
    )
    # The most cranial slices show only the trachea, which must not be lung.
    first_z = float(covid_volume.datasets[0].ImagePositionPatient[2])
    last_z = float(covid_volume.datasets[-1].ImagePositionPatient[2])
    top = slice(-3, None) if last_z > first_z else slice(0, 3)
    assert not lungs.both[top].any()
    assert elapsed < 30.0  # a sanity bound for a shared 2-core machine, not a benchmark


@pytest.mark.slow
def test_cap_study_lungs_are_physiological(cap_volume: CTVolume) -> None:
    lungs = MorphologicalLungSegmenter().segment(cap_volume)
    total_ml = lungs.both.sum() * cap_volume.voxel_volume_ml
    print(f"cap002 lungs: {total_ml:.0f} mL")
    assert 2000.0 < total_ml < 8000.0
    assert _centroid_x_lps(cap_volume, lungs.left) > 0 > _centroid_x_lps(cap_volume, lungs.right)


@pytest.mark.parametrize("kept", ["left", "right"])
def test_a_single_lung_keeps_its_side(kept: str) -> None:
    phantom = make_phantom(shape=(24, 128, 128), spacing=(6.0, 1.5, 1.5))
    hu = phantom.volume.hu.copy()
    removed = phantom.right if kept == "left" else phantom.left
    hu[removed | phantom.trachea | phantom.bronchi] = 40.0
    volume = volume_from_array(hu, phantom.volume.spacing_mm, phantom.volume.origin_lps)
    lungs = MorphologicalLungSegmenter().segment(volume)
    truth = phantom.left if kept == "left" else phantom.right
    found, other = (lungs.left, lungs.right) if kept == "left" else (lungs.right, lungs.left)
    assert dice(found, truth) > 0.95
    assert not other.any()
