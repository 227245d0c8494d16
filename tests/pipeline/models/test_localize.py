"""CAM thresholding, slice range, 3DCC candidates and lesion localization."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.preprocessing import hu_of_uint8_level
from pipeline.stages import LesionLocalizer
from pipeline.stages.cc3d import cc3d_candidates, fragmented_windows
from pipeline.stages.localize import CamLesionLocalizer, lung_slice_range, top_share_threshold
from pipeline.types import Classification, LungMask, ModelInfo
from tests.pipeline.models.phantoms import Phantom


def _classification(activation: npt.NDArray[np.float32] | None) -> Classification:
    return Classification(
        label="covid19",
        probabilities={"non-covid": 0.1, "covid19": 0.9},
        p_covid=0.9,
        embedding=np.zeros(32, np.float32),
        model=ModelInfo("decovnet", "test"),
        activation=activation,
    )


def _blob(shape: tuple[int, int, int], centre: tuple[int, ...], sigma_vox: float):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    return np.exp(-d2 / (2 * sigma_vox**2)).astype(np.float32)


def test_top_share_threshold_keeps_about_five_percent() -> None:
    values = np.linspace(0.0, 1.0, 10_001, dtype=np.float32)
    thr = top_share_threshold(values, 0.05, 50)
    assert thr == pytest.approx(0.94, abs=1e-6)  # the 3 top bins hold 6 % > 5 %
    kept = (values > thr).mean()
    assert 0.05 <= kept <= 0.07


def test_lung_slice_range_walks_out_from_the_peak() -> None:
    areas = np.array([90, 0, 1, 5, 40, 80, 100, 70, 39, 10, 50, 0])
    # the edge slices (first/last 20 %) cannot hold the peak; 40 % of 100 = 40
    assert lung_slice_range(areas) == (4, 8)
    assert lung_slice_range([]) == (0, 0)


def _fragmented_tile() -> npt.NDArray[np.bool_]:
    tile = np.zeros((6, 6), dtype=bool)  # 4 pieces, 24 of 36 pixels (std 0.471)
    tile[0:2, 0:6] = True
    tile[3:6, 0:1] = True
    tile[3:6, 2:4] = True
    tile[4:6, 5:6] = True
    tile[3, 5] = True
    return tile


def test_fragmented_windows_need_three_pieces_and_half_fill() -> None:
    tile = _fragmented_tile()
    mask = np.zeros((1, 12, 18), dtype=bool)
    mask[0, 0:6, 0:6] = tile  # fragmented and half full
    mask[0, 0:6, 6:12] = True  # full
    two = tile.copy()
    two[3:6, 2:4] = False
    two[0:2, 0:6] = True
    two[2, :] = True  # joins pieces: fewer than 3
    mask[0, 6:12, 0:6] = two
    grid = fragmented_windows(mask)
    assert grid.shape == (1, 2, 3)
    assert grid[0, 0, 0] and not grid[0, 0, 1] and not grid[0, 1, 0]


def test_cc3d_keeps_the_largest_component_or_all() -> None:
    tile = _fragmented_tile()
    mask = np.zeros((20, 60, 60), dtype=bool)
    mask[:, 6:54, 6:54] = True  # lung
    for z in range(2, 16):  # a big fragmented region: 2 x 2 windows, 14 slices
        for wy in (1, 2):
            for wx in (1, 2):
                mask[z, wy * 6 : wy * 6 + 6, wx * 6 : wx * 6 + 6] = tile
    for z in range(4, 8):  # a small one far away
        mask[z, 42:48, 42:48] = tile
    largest = cc3d_candidates(mask)
    everything = cc3d_candidates(mask, keep_all=True)
    assert largest[5, 8, 8] and not largest[5, 44, 44]
    assert everything[5, 8, 8] and everything[5, 44, 44]
    # slices outside [10 %, 80 %) of the mask's extent are ignored
    assert not everything[:2].any() and not everything[16:].any()
    assert not cc3d_candidates(np.zeros((5, 12, 12), dtype=bool)).any()


def test_localizer_finds_the_inserted_lesion(phantom: Phantom) -> None:
    v = phantom.volume
    lungs = LungMask(left=phantom.left, right=phantom.right | phantom.lesion, method="truth")
    activation = _blob(v.shape, phantom.lesion_centre_zyx, sigma_vox=6.0)
    localizer: LesionLocalizer = CamLesionLocalizer()
    lesions = localizer.localize(v, lungs, _classification(activation))
    assert len(lesions) >= 1
    first = lesions[0]
    assert first.number == 1
    assert first.side == "right"
    assert (first.mask & phantom.lesion).sum() >= 0.9 * first.mask.sum()
    assert not (first.mask & ~lungs.both).any()
    expected = v.index_to_lps(phantom.lesion_centre_zyx)[0]
    assert np.linalg.norm(np.asarray(first.centroid_lps) - expected) < 10.0
    assert first.volume_ml == pytest.approx(first.mask.sum() * v.voxel_volume_ml)
    assert first.mean_hu > hu_of_uint8_level(75)
    assert 0.5 < first.peak_activation <= 1.0
    assert abs(first.largest_slice - phantom.lesion_centre_zyx[0]) <= 3
    volumes = [les.volume_ml for les in lesions]
    assert volumes == sorted(volumes, reverse=True)


def test_activation_without_opacity_gives_no_lesion(phantom: Phantom) -> None:
    v = phantom.volume
    lungs = LungMask(left=phantom.left, right=phantom.right | phantom.lesion, method="truth")
    z, y, x = phantom.lesion_centre_zyx
    mirrored = (z, y, v.shape[2] - 1 - x)  # the same place in the healthy left lung
    activation = _blob(v.shape, mirrored, sigma_vox=6.0)
    for use_3dcc in (True, False):
        found = CamLesionLocalizer(use_3dcc=use_3dcc).localize(
            v, lungs, _classification(activation)
        )
        assert not any((les.mask & phantom.lesion).any() for les in found)
        assert all(les.volume_ml >= 0.5 for les in found)


def test_size_threshold_and_flat_activation(phantom: Phantom) -> None:
    v = phantom.volume
    lungs = LungMask(left=phantom.left, right=phantom.right | phantom.lesion, method="truth")
    activation = _blob(v.shape, phantom.lesion_centre_zyx, sigma_vox=6.0)
    assert (
        CamLesionLocalizer(min_volume_ml=1000.0).localize(v, lungs, _classification(activation))
        == ()
    )
    # a flat map (no positive evidence anywhere) falls back to the intensity candidates
    flat = np.zeros(v.shape, np.float32)
    fallback = CamLesionLocalizer().localize(v, lungs, _classification(flat))
    assert fallback and all(lesion.method == "intensity" for lesion in fallback)
    assert (fallback[0].mask & phantom.lesion).sum() >= 0.9 * fallback[0].mask.sum()


def test_fallback_without_activation_map(phantom: Phantom) -> None:
    v = phantom.volume
    lungs = LungMask(left=phantom.left, right=phantom.right | phantom.lesion, method="truth")
    lesions = CamLesionLocalizer().localize(v, lungs, _classification(None))
    assert len(lesions) >= 1
    assert (lesions[0].mask & phantom.lesion).sum() >= 0.9 * lesions[0].mask.sum()
    assert lesions[0].peak_activation == 0.0 and lesions[0].method == "intensity"


def test_localizer_argument_checks() -> None:
    with pytest.raises(ValueError):
        CamLesionLocalizer(top_share=0.0)
    with pytest.raises(ValueError):
        CamLesionLocalizer(min_volume_ml=-1.0)
    assert CamLesionLocalizer().info.name == "decovnet-cam-3dcc"


def test_3dcc_chooses_among_cam_regions_but_never_empties_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.stages.localize as localize

    labels = np.zeros((10, 20, 20), dtype=np.int32)
    labels[1:4, 2:8, 2:8] = 1  # 108 voxels
    labels[5:8, 10:14, 10:14] = 2  # 48 voxels
    aerated = np.zeros(labels.shape, dtype=bool)
    localizer = CamLesionLocalizer(min_volume_ml=0.01)
    overlap = np.zeros(labels.shape, dtype=bool)
    overlap[6, 11, 11] = True  # a 3DCC candidate inside region 2 only
    monkeypatch.setattr(localize, "cc3d_candidates", lambda mask, keep_all: overlap)
    assert localizer._components_to_keep(labels, 2, aerated, voxel_ml=0.001) == [2]
    monkeypatch.setattr(localize, "cc3d_candidates",
                        lambda mask, keep_all: np.zeros(labels.shape, dtype=bool))
    assert localizer._components_to_keep(labels, 2, aerated, voxel_ml=0.001) == [1, 2]
    # without 3DCC every region above the size threshold is kept, largest first
    assert CamLesionLocalizer(min_volume_ml=0.01, use_3dcc=False)._components_to_keep(
        labels, 2, aerated, voxel_ml=0.001) == [1, 2]
