"""Phantom generator version 2: fissures, nodules kept out of the lesion mask, effusions out of
the lungs, kernels, thicker slices; version 1 untouched; the cache regenerates on a version."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.cache import cached_version, load_case, make_cases
from training.synthetic import generate_case, realism


def test_version_two_adds_anatomy_and_keeps_ground_truth_honest() -> None:
    case = generate_case(12, kind="covid", matrix=96, version=2)
    assert case.version == 2 and "fissures" in case.lesion_kinds
    assert any(k.startswith("kernel-") for k in case.lesion_kinds)
    assert 1.0 <= case.spacing_mm[0] <= 5.0
    assert not (case.lesion_mask & ~case.lungs).any()
    again = generate_case(12, kind="covid", matrix=96, version=2)
    assert np.array_equal(case.hu, again.hu)  # deterministic per seed


def test_version_one_is_what_the_shipped_models_trained_on() -> None:
    a = generate_case(5, kind="normal", matrix=64)
    b = generate_case(5, kind="normal", matrix=64, version=1)
    assert a.version == 1 and np.array_equal(a.hu, b.hu)
    assert not {"fissures", "nodule"} & set(a.lesion_kinds)
    with pytest.raises(ValueError, match="version"):
        generate_case(5, kind="normal", matrix=64, version=3)


def _lungs(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.indices(shape)
    right = ((yy - 32) ** 2 + (xx - 20) ** 2 < 14**2) & (zz > 2) & (zz < shape[0] - 3)
    left = ((yy - 32) ** 2 + (xx - 44) ** 2 < 14**2) & (zz > 2) & (zz < shape[0] - 3)
    return right, left


def test_fissure_nodules_and_effusion() -> None:
    rng = np.random.default_rng(0)
    shape, spacing = (40, 64, 64), (2.0, 1.0, 1.0)
    right, left = _lungs(shape)
    vol = np.full(shape, -850.0, dtype=np.float32)
    realism.add_fissures(vol, (right, left), spacing, rng)
    sheet = (vol == realism.FISSURE_HU) & (right | left)
    assert 0.005 < sheet.sum() / (right | left).sum() < 0.2  # a thin sheet, in both lungs
    assert sheet[right].any() and sheet[left].any()
    free = right & ~sheet
    placed = realism.add_nodules(vol, free, spacing, rng, 3)
    solid = (vol > -100) & free
    assert placed == 3 and 1 <= ndimage.label(solid)[1] <= 3
    before = int(left.sum())
    realism.add_effusion(vol, left, spacing, rng)
    assert left.sum() < before  # the fluid is no longer lung
    fluid = (vol >= realism.EFFUSION_HU[0]) & (vol <= realism.EFFUSION_HU[1])
    assert fluid.any() and not (fluid & left).any()
    ys = np.nonzero(fluid)[1]
    assert ys.mean() > 32  # dependent: the posterior half


def test_kernels_change_blur_and_noise() -> None:
    vol = np.zeros((4, 64, 64), dtype=np.float32)
    vol[:, :, 32:] = 1000.0
    names, edges = set(), {}
    for seed in range(12):
        out, name = realism.image_formation(vol, (2.0, 0.7, 0.7), np.random.default_rng(seed),
                                            (-1024.0, 3071.0))
        names.add(name)
        edges.setdefault(name, float(np.abs(np.diff(out[2, 10:50, 28:36], axis=1)).max()))
    assert names == {k.name for k in realism.KERNELS}
    assert edges["sharp"] > edges["smooth"]


def test_cache_regenerates_a_case_of_another_version(tmp_path) -> None:
    [path] = make_cases(tmp_path, "val", 1, matrix=64, slice_spacing_mm=5.0)
    assert cached_version(path) == 1
    [same] = make_cases(tmp_path, "val", 1, matrix=64, slice_spacing_mm=5.0, version=2)
    assert same == path and cached_version(path) == 2 and load_case(path).version == 2
