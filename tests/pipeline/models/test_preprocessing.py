"""Windowing, resampling, boxes and the DeCoVNet input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.preprocessing import (
    Box,
    bounding_box,
    circular_fov_mask,
    coarse_lung_box,
    decovnet_input,
    hu_of_uint8_level,
    resample_z,
    resize,
    sample_axis,
    unet_input,
    unet_target,
    window,
    window_uint8,
    z_resample_coords,
)
from tests.pipeline.models.phantoms import Phantom


def test_window_maps_the_decovnet_range() -> None:
    hu = np.array([-2000.0, -1200.0, -300.0, 600.0, 3000.0])
    np.testing.assert_allclose(window(hu), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert window(hu).dtype == np.float32
    np.testing.assert_array_equal(window_uint8(hu), [0, 0, 127, 255, 255])
    with pytest.raises(ValueError):
        window(hu, lo=10, hi=0)


def test_uint8_level_75_is_about_minus_671_hu() -> None:
    hu75 = hu_of_uint8_level(75)
    assert hu75 == pytest.approx(-670.6, abs=0.1)
    levels = window_uint8(np.array([hu75 - 3.0, hu75 + 3.0, hu_of_uint8_level(76) + 0.01]))
    np.testing.assert_array_equal(levels, [74, 75, 76])


def test_linear_resize_matches_scipy_zoom() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((5, 7, 9)).astype(np.float32)
    ours = resize(a, (9, 13, 4), order=1)
    ref = ndimage.zoom(a, (9 / 5, 13 / 7, 4 / 9), order=1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_cubic_sampling_is_exact_on_quadratics_and_keeps_nodes() -> None:
    x = np.arange(12, dtype=np.float32)
    f = 0.5 * x**2 - x
    coords = np.array([3.0, 3.25, 5.5, 7.75])
    got = sample_axis(f, 0, coords, order=3)
    np.testing.assert_allclose(got, 0.5 * coords**2 - coords, atol=1e-4)


def test_nearest_sampling_keeps_dtype() -> None:
    m = np.array([[True, False, True]])
    out = sample_axis(m, 1, [0.2, 0.9, 1.6], order=0)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, [[True, False, True]])


def test_z_resampling_to_one_mm() -> None:
    coords = z_resample_coords(11, 2.5)
    assert coords.size == 26  # 25 mm extent -> 26 slices 1 mm apart
    np.testing.assert_allclose(coords[:3], [0.0, 0.4, 0.8])
    ramp = np.arange(11, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    out = resample_z(ramp, 2.5)
    np.testing.assert_allclose(out[:, 0, 0], coords, atol=1e-5)
    with pytest.raises(ValueError):
        z_resample_coords(5, 0.0)


def test_bounding_box_and_expansion() -> None:
    m = np.zeros((10, 20, 30), dtype=bool)
    m[2:5, 3:8, 10:21] = True
    box = bounding_box(m)
    assert box == Box(2, 5, 3, 8, 10, 21)
    assert box.shape == (3, 5, 11)
    assert box.expanded((3, 1, 100), m.shape) == Box(0, 8, 2, 9, 0, 30)
    assert bounding_box(np.zeros((2, 2, 2), dtype=bool)) is None


def test_circular_fov_radius() -> None:
    fov = circular_fov_mask((512, 512))
    assert fov[255, 255] and fov[255, 2 + 1] and not fov[0, 0] and not fov[255, 0]
    assert fov.sum() == pytest.approx(np.pi * 253**2, rel=0.01)


def test_coarse_lung_box_contains_the_lungs(phantom: Phantom) -> None:
    box = coarse_lung_box(phantom.volume.hu, phantom.volume.spacing_mm)
    assert box is not None
    lungs = bounding_box(phantom.left | phantom.right)
    assert lungs is not None
    assert box.z0 <= lungs.z0 and box.z1 >= lungs.z1
    assert box.y0 <= lungs.y0 and box.y1 >= lungs.y1
    assert box.x0 <= lungs.x0 and box.x1 >= lungs.x1
    # ... and not much more than the lungs (8 mm margin + 4-pixel grid)
    assert box.y1 - box.y0 <= lungs.y1 - lungs.y0 + 2 * 8


def test_coarse_lung_box_none_without_internal_air() -> None:
    hu = np.full((5, 64, 64), -1000.0, dtype=np.float32)
    hu[:, 10:50, 10:50] = 40.0
    assert coarse_lung_box(hu, (2.0, 1.0, 1.0)) is None


def test_unet_input_and_target_shapes(phantom: Phantom) -> None:
    box = Box(0, 48, 20, 108, 10, 118)
    x = unet_input(phantom.volume.hu, box, [3, 10, 20], (64, 96))
    y = unet_target(phantom.left, box, [3, 10, 20], (64, 96))
    assert x.shape == (3, 1, 64, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.shape == (3, 64, 96) and set(np.unique(y)) <= {0, 1}


def test_decovnet_input_shape_and_channels(phantom: Phantom) -> None:
    lungs = phantom.left | phantom.right
    prepared = decovnet_input(phantom.volume.hu, lungs, phantom.volume.spacing_mm[0])
    box = bounding_box(lungs)
    assert box is not None and prepared.geometry.box == box
    t_expected = int(np.floor((box.shape[0] - 1) * 2.5)) + 1
    assert prepared.array.shape == (2, t_expected, 224, 336)
    img, mask = prepared.array
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert set(np.unique(mask)) <= {0.0, 1.0}
    # lung voxels are dark in the image channel
    assert img[mask == 1].mean() < 0.25 < img[mask == 0].mean()


def test_decovnet_input_rejects_empty_masks(phantom: Phantom) -> None:
    with pytest.raises(ValueError):
        decovnet_input(phantom.volume.hu, np.zeros(phantom.volume.shape, bool), 2.5)


def test_crop_geometry_maps_the_mask_channel_back(phantom: Phantom) -> None:
    lungs = phantom.left | phantom.right
    prepared = decovnet_input(phantom.volume.hu, lungs, phantom.volume.spacing_mm[0])
    back = prepared.geometry.to_volume(prepared.array[1], order=1) > 0.5
    overlap = 2 * (back & lungs).sum() / (back.sum() + lungs.sum())
    assert back.shape == lungs.shape
    assert overlap > 0.95
    # a coarse grid (like the CAM's feature map) maps to the same box
    coarse = prepared.geometry.to_volume(np.ones((4, 7, 9), np.float32))
    assert coarse[box_slices(prepared.geometry.box)].min() == 1.0
    assert coarse.sum() == np.prod(prepared.geometry.box.shape)


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    return box.slices
