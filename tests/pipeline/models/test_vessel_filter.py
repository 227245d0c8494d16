"""The localizer ignores a synthetic vessel tree and hilum but keeps a peripheral opacity."""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.stages.localize import CamLesionLocalizer
from pipeline.stages.vessel_filter import mediastinum_rows, shape_facts
from pipeline.types import Classification, CTVolume, LungMask, ModelInfo

SHAPE = (36, 176, 224)
SPACING = (2.0, 0.8, 0.8)


def _segment(a: tuple[float, float, float], b: tuple[float, float, float], radius_mm: float):
    """Voxels within ``radius_mm`` of the segment a-b (points in mm, z y x)."""
    pa, pb = np.asarray(a), np.asarray(b)
    sp = np.asarray(SPACING)
    lo = np.maximum(np.floor((np.minimum(pa, pb) - radius_mm) / sp).astype(int), 0)
    hi = np.minimum(np.ceil((np.maximum(pa, pb) + radius_mm) / sp).astype(int) + 1, SHAPE)
    axes = [np.arange(lo[i], hi[i]) * sp[i] for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    t = np.clip(((grid - pa) @ (pb - pa)) / float((pb - pa) @ (pb - pa)), 0.0, 1.0)
    nearest = pa + t[..., None] * (pb - pa)
    out = np.zeros(SHAPE, dtype=bool)
    near = np.linalg.norm(grid - nearest, axis=-1) <= radius_mm
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = near
    return out


@functools.cache
def _chest() -> tuple[CTVolume, LungMask, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    rng = np.random.default_rng(1)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    zc, yc = SHAPE[0] / 2, SHAPE[1] / 2
    hu = np.full(SHAPE, 40.0, np.float32)

    def lung(xc: float) -> npt.NDArray[np.bool_]:
        return ((z - zc) / 20) ** 2 + ((y - yc) / 60) ** 2 + ((x - xc) / 42) ** 2 <= 1.0

    right, left = lung(62), lung(162)  # a 36-px (29 mm) mediastinum between them
    hu[right | left] = -860.0
    hilum = (14 * SPACING[0], yc * SPACING[1], 104 * SPACING[2])  # medial edge, right lung
    tree = _segment(hilum, (14 * 2.0, 70 * 0.8, 60 * 0.8), 3.5)  # trunk
    for end, r in (((4 * 2.0, 40 * 0.8, 40 * 0.8), 2.0), ((26 * 2.0, 110 * 0.8, 45 * 0.8), 2.0),
                   ((18 * 2.0, 95 * 0.8, 30 * 0.8), 1.6), ((10 * 2.0, 60 * 0.8, 85 * 0.8), 1.6)):
        tree |= _segment((14 * 2.0, 80 * 0.8, 75 * 0.8), end, r)
    tree |= ((z - 14) / 3) ** 2 + ((y - yc) / 9) ** 2 + ((x - 100) / 7) ** 2 <= 1.0  # hilar bunch
    tree &= right
    hu[tree] = 40.0
    opacity = (((z - 18) / 4) ** 2 + ((y - 40) / 14) ** 2 + ((x - 185) / 10) ** 2 <= 1.0) & left
    hu[opacity] = -450.0 + 40.0 * rng.standard_normal(int(opacity.sum()))
    hu = ndimage.gaussian_filter(hu, (0.5, 0.8, 0.8))  # partial volume
    hu += 15.0 * rng.standard_normal(SHAPE).astype(np.float32)
    volume = CTVolume(
        hu=hu.astype(np.float32), spacing_mm=SPACING, origin_lps=(0.0, 0.0, 0.0),
        direction=np.eye(3), datasets=(), study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4", frame_of_reference_uid="1.2.3.5",
    )
    return volume, LungMask(left=left, right=right, method="truth"), tree, opacity


def _firing_on(region: npt.NDArray[np.bool_]) -> Classification:
    activation = ndimage.gaussian_filter(region.astype(np.float32), 2.0)
    return Classification(
        label="covid19", probabilities={"non-covid": 0.1, "covid19": 0.9}, p_covid=0.9,
        embedding=np.zeros(32, np.float32), model=ModelInfo("decovnet", "test"),
        activation=activation / activation.max(),
    )


def test_localizer_ignores_a_vessel_tree_and_hilum_but_keeps_the_opacity() -> None:
    volume, lungs, tree, opacity = _chest()
    cam = _firing_on(tree | opacity)
    plain = CamLesionLocalizer(min_volume_ml=0.05, restrict_slice_range=False, use_3dcc=False,
                               drop_vessels=False).localize(volume, lungs, cam)
    # without the filter the tree is a "lesion"
    assert any((les.mask & tree).sum() > 0.5 * les.mask.sum() for les in plain)
    found = CamLesionLocalizer(min_volume_ml=0.05, restrict_slice_range=False, use_3dcc=False
                               ).localize(volume, lungs, cam)
    assert found, "the peripheral opacity is a lesion"
    assert all((les.mask & tree).sum() <= 0.1 * les.mask.sum() for les in found)
    assert any((les.mask & opacity).sum() > 0.5 * les.mask.sum() for les in found)


def test_shape_facts_tell_the_tree_from_the_opacity() -> None:
    volume, lungs, tree, opacity = _chest()
    dense = volume.hu > -664
    vessel = shape_facts(volume.hu, tree & dense, lungs.left, lungs.right, SPACING)
    blob = shape_facts(volume.hu, opacity & dense, lungs.left, lungs.right, SPACING)
    assert vessel.is_vessel and not blob.is_vessel
    assert vessel.hilar_share > blob.hilar_share


def test_mediastinum_is_the_gap_between_the_lungs() -> None:
    left = np.zeros((1, 3, 12), dtype=bool)
    right = np.zeros((1, 3, 12), dtype=bool)
    right[0, :2, 1:4] = True
    left[0, 1:, 8:11] = True
    gap = mediastinum_rows(left, right)
    assert gap[0, 1].tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert not gap[0, 0].any() and not gap[0, 2].any()  # one lung only on those rows
