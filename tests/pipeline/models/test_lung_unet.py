"""The U-Net lung stage with a hand-built threshold U-Net, and its refinement and split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.preprocessing import Box
from pipeline.stages import LungSegmenter
from pipeline.stages.lung_split import separate_joined
from pipeline.stages.lung_unet import (
    UNetLungSegmenter,
    dice,
    dice_lost_versus_full_resolution,
    refine_and_split,
    refine_mask,
)
from pipeline.types import CTVolume
from tests.pipeline.models.phantoms import Phantom, make_phantom, register_threshold_unet


def test_stage_without_weights_raises_model_error(registry: Path) -> None:
    with pytest.raises(ModelError, match="unet2d-lungs"):
        UNetLungSegmenter(device="cpu", registry_dir=registry)


def test_segments_and_splits_the_phantom_lungs(registry: Path, phantom: Phantom) -> None:
    register_threshold_unet(registry)
    segmenter: LungSegmenter = UNetLungSegmenter(device="cpu", registry_dir=registry)
    assert isinstance(segmenter, UNetLungSegmenter) and segmenter.work_shape_px == (64, 96)
    assert segmenter.info.name == "unet2d-lungs" and len(segmenter.info.sha256) == 64
    result = segmenter.segment(phantom.volume)
    assert result.method == "unet2d-lungs@0.0.1-test"
    assert result.left.shape == phantom.volume.shape and result.left.dtype == bool
    assert not (result.left & result.right).any()
    # +x is the patient's left: the phantom's left lung sits at high x
    assert dice(result.left, phantom.left) > 0.93
    # hole filling puts the (darker-than-threshold-failing) lesion back into the right lung
    assert dice(result.right, phantom.right | phantom.lesion) > 0.93
    assert result.right[phantom.lesion].mean() > 0.95
    again = segmenter.segment(phantom.volume)
    np.testing.assert_array_equal(again.left, result.left)


@pytest.mark.slow
def test_joined_lungs_are_split_and_dice_versus_full_resolution(registry: Path) -> None:
    joined = make_phantom(joined=True, lesion=False, seed=3)
    register_threshold_unet(registry)
    segmenter = UNetLungSegmenter(device="cpu", registry_dir=registry)
    result = segmenter.segment(joined.volume)
    assert dice(result.left, joined.left) > 0.9
    assert dice(result.right, joined.right) > 0.9
    report = dice_lost_versus_full_resolution(segmenter, joined.volume)
    assert report["dice_both"] > 0.95
    assert report["fast_s"] > 0 and report["reference_s"] > 0


def test_refine_fills_holes_and_closes_notches() -> None:
    mask = np.zeros((3, 40, 40), dtype=bool)
    mask[:, 5:35, 5:35] = True
    mask[:, 15:20, 15:20] = False  # a vessel hole
    mask[:, 5:9, 20:22] = False  # a narrow notch from the border
    refined = refine_mask(mask, (1.0, 1.0, 1.0))
    assert refined[:, 15:20, 15:20].all() and refined[:, 6:9, 20:22].all()
    assert not refined[:, :4].any()


def _grid_volume(shape: tuple[int, int, int]) -> tuple[CTVolume, Box]:
    volume = CTVolume(
        hu=np.zeros(shape, np.float32),
        spacing_mm=(1.0, 1.0, 1.0),
        origin_lps=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        datasets=(),
        study_instance_uid="1",
        series_instance_uid="2",
        frame_of_reference_uid="3",
    )
    return volume, Box(0, shape[0], 0, shape[1], 0, shape[2])


def test_refine_and_split_picks_one_lung_per_side() -> None:
    shape = (10, 60, 60)
    volume, box = _grid_volume(shape)
    mask = np.zeros(shape, dtype=bool)
    mask[1:9, 5:35, 34:56] = True  # high x: patient left, the largest part
    mask[1:9, 38:58, 36:56] = True  # gas below it: larger than the right lung, same side
    mask[1:9, 5:35, 10:22] = True  # low x: patient right
    mask[0, 0, 0] = True  # debris
    left, right = refine_and_split(mask, (1.0, 1.0, 1.0), volume, box)
    assert left[1:9, 20, 45].all() and right[1:9, 20, 15].all()
    assert not left[:, 45, 45].any() and not right[:, 45, 45].any()
    assert not left[0, 0, 0] and not right[0, 0, 0]
    assert not (left & right).any()


def test_refine_and_split_places_a_lone_lung_by_side() -> None:
    shape = (10, 40, 60)
    volume, box = _grid_volume(shape)
    mask = np.zeros(shape, dtype=bool)
    mask[1:9, 5:35, 34:56] = True
    left, right = refine_and_split(mask, (1.0, 1.0, 1.0), volume, box)
    assert left.sum() == mask.sum() and not right.any()


def test_separate_joined_needs_a_neck() -> None:
    mask = np.zeros((4, 40, 60), dtype=bool)
    mask[:, 5:35, 5:28] = True
    mask[:, 5:35, 32:55] = True
    mask[:, 10:13, 28:32] = True  # a thin bridge
    parts = separate_joined(mask, (1.0, 1.0, 1.0))
    assert parts is not None
    assert parts[0][:, 20, 10].all() != parts[1][:, 20, 10].all()
    assert (parts[0] | parts[1]).sum() == mask.sum()
    blob = np.zeros((4, 40, 40), dtype=bool)
    blob[:, 5:35, 5:35] = True
    assert separate_joined(blob, (1.0, 1.0, 1.0)) is None
