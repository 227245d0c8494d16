"""Synthetic lung lesions: COVID-like peripheral GGO/consolidation and non-COVID look-alikes.

Every function edits a noise-free HU volume in place inside the given lung mask and returns the
boolean mask of what it added, so the same code serves the phantoms and the insertion into real CT
(``training.insertion``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.synthetic import hu

SUBPLEURAL_DEPTH_MM = 12.0
LESION_MASK_WEIGHT_MIN = 0.5  # a voxel belongs to the lesion mask where the blend weight > this


@dataclass(frozen=True)
class LesionSpec:
    """One placed lesion: kind, centre (voxel z, y, x), radii in mm and target HU."""

    kind: str  # "ggo", "consolidation", "lobar-consolidation", "mass", "atelectasis"
    centre_zyx: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    target_hu: float


def _blob_weight(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    centre: tuple[float, float, float],
    radii_mm: tuple[float, float, float],
    edge_fraction: float,
    rng: np.random.Generator,
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.float32]]:
    """Blend weight (1 in the core, fading to 0 over ``edge_fraction`` of the radius) in a box."""
    reach = [r * (1.0 + edge_fraction) * 1.3 / s for r, s in zip(radii_mm, spacing_mm, strict=True)]
    b0, b1, b2 = (
        slice(max(0, int(c - r)), min(n, int(np.ceil(c + r)) + 1))
        for c, r, n in zip(centre, reach, shape, strict=True)
    )
    box = (b0, b1, b2)
    zz, yy, xx = np.meshgrid(
        *[np.arange(b.start, b.stop, dtype=np.float32) for b in box], indexing="ij"
    )
    rot = _random_rotation(rng)
    rel = np.stack(
        [(zz - centre[0]) * spacing_mm[0], (yy - centre[1]) * spacing_mm[1],
         (xx - centre[2]) * spacing_mm[2]],
        axis=-1,
    ) @ rot.T
    dist = np.sqrt(sum((rel[..., i] / radii_mm[i]) ** 2 for i in range(3)))
    if dist.size:
        lobes = 1.0 + 0.18 * _box_noise(dist.shape, rng)
        dist = dist * lobes
    edge = max(edge_fraction, 1e-3)
    weight = np.clip((1.0 + edge - dist) / edge, 0.0, 1.0).astype(np.float32)
    return box, weight


def _box_noise(shape: tuple[int, ...], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    coarse = rng.standard_normal(tuple(max(2, s // 6) for s in shape)).astype(np.float32)
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    field = field[tuple(slice(0, s) for s in shape)]
    if field.shape != shape:
        field = np.pad(field, [(0, s - f) for s, f in zip(shape, field.shape, strict=True)],
                       mode="edge")
    return field / (float(field.std()) or 1.0)


def _random_rotation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def apply_blob(
    vol: npt.NDArray[np.float32],
    lung: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    spec: LesionSpec,
    edge_fraction: float,
    texture_sd_hu: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.bool_]:
    """Blend ``spec.target_hu`` (plus texture) into the lung voxels of a fuzzy ellipsoid.

    Denser structures (vessels) stay visible because the result is max(original, blend), the way
    ground glass lets vessels show through. Returns the lesion mask (full volume shape).
    """
    shape = (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))
    box, weight = _blob_weight(shape, spacing_mm, spec.centre_zyx, spec.radii_mm, edge_fraction,
                               rng)
    inside = lung[box]
    weight = weight * inside
    local = vol[box]
    target = spec.target_hu + texture_sd_hu * _box_noise(weight.shape, rng)
    blended = local * (1.0 - weight) + target * weight
    vol[box] = np.where(inside, np.maximum(local, blended), local)
    mask = np.zeros(lung.shape, dtype=bool)
    mask[box] = weight > LESION_MASK_WEIGHT_MIN
    return mask


def pick_lung_voxel(
    lung: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    preference: npt.NDArray[np.float64] | None = None,
) -> tuple[float, float, float]:
    """Random voxel of ``lung`` (weights ``preference`` over its voxels if given)."""
    idx = np.flatnonzero(lung)
    if idx.size == 0:
        raise ValueError("empty lung mask: no place for a lesion")
    p = None
    if preference is not None:
        w = preference.ravel()[idx].astype(np.float64)
        if w.sum() > 0:
            p = w / w.sum()
    flat = int(rng.choice(idx, p=p))
    z, y, x = np.unravel_index(flat, lung.shape)
    return float(z), float(y), float(x)


def covid_lesions(
    vol: npt.NDArray[np.float32],
    lungs: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]],
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
    severity: float | None = None,
) -> tuple[npt.NDArray[np.bool_], list[LesionSpec]]:
    """Several peripheral subpleural GGOs, some with consolidation, mostly bilateral and posterior.

    ``severity`` in [0, 1] sets number and size (drawn when None).
    """
    sev = float(rng.uniform(0.0, 1.0)) if severity is None else float(np.clip(severity, 0, 1))
    n = int(rng.integers(1, 4) + round(sev * rng.integers(1, 7)))
    bilateral = rng.uniform() < 0.8
    sides = [0, 1] if bilateral else [int(rng.integers(0, 2))]
    union = lungs[0] | lungs[1]
    if not union.any():
        raise ValueError("empty lung mask: no place for a lesion")
    # subpleural preference: near the lung border, posterior and lower voxels favoured
    step = tuple(max(1, int(round(4.0 / s))) for s in spacing_mm)
    sub = union[:: step[0], :: step[1], :: step[2]]
    depth_mm = ndimage.distance_transform_edt(
        sub, sampling=tuple(s * k for s, k in zip(spacing_mm, step, strict=True))
    )
    near = (sub & (depth_mm < SUBPLEURAL_DEPTH_MM)).astype(np.float64)
    zz = np.linspace(1.0, 0.0, sub.shape[0])[:, None, None]  # index 0 is caudal: favour it
    yy = np.linspace(0.0, 1.0, sub.shape[1])[None, :, None]  # large y is posterior
    pref_sub = near * (0.4 + zz) * (0.3 + yy)
    pref = np.zeros(union.shape, dtype=np.float64)
    pref[:: step[0], :: step[1], :: step[2]] = pref_sub
    mask = np.zeros(union.shape, dtype=bool)
    specs: list[LesionSpec] = []
    for i in range(n):
        lung = lungs[sides[i % len(sides)]]
        if not lung.any():
            lung = union
        centre = pick_lung_voxel(lung, rng, pref * lung)
        r = float(rng.uniform(7.0, 14.0 + 22.0 * sev))
        radii = (r * float(rng.uniform(0.7, 1.3)), r * float(rng.uniform(0.7, 1.3)),
                 r * float(rng.uniform(0.7, 1.3)))
        ggo_hu = float(rng.uniform(*hu.GGO_HU_RANGE))
        spec = LesionSpec("ggo", centre, radii, ggo_hu)
        mask |= apply_blob(vol, lung, spacing_mm, spec, edge_fraction=0.45, texture_sd_hu=35.0,
                           rng=rng)
        specs.append(spec)
        if rng.uniform() < 0.25 + 0.4 * sev:
            core = LesionSpec("consolidation", centre,
                              (0.5 * radii[0], 0.5 * radii[1], 0.5 * radii[2]),
                              float(rng.uniform(*hu.CONSOLIDATION_HU_RANGE)))
            mask |= apply_blob(vol, lung, spacing_mm, core, edge_fraction=0.3, texture_sd_hu=20.0,
                               rng=rng)
            specs.append(core)
    return mask, specs


def lobar_consolidation(
    vol: npt.NDArray[np.float32],
    lungs: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]],
    lung_t: npt.NDArray[np.float32],
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.bool_], list[LesionSpec]]:
    """One dense consolidation filling most of a lower or upper lobe of one lung (bacterial CAP)."""
    lung = lungs[int(rng.integers(0, 2))]
    zs, ys, _ = np.nonzero(lung)
    if zs.size == 0:
        raise ValueError("empty lung mask: no place for a lesion")
    y_lo, y_hi = float(ys.min()), float(ys.max())
    z_idx = np.arange(lung.shape[0], dtype=np.float32)[:, None, None]
    y_idx = np.arange(lung.shape[1], dtype=np.float32)[None, :, None]
    # oblique fissure: lower lobe is posterior-inferior of a plane rising towards the back
    y_rel = (y_idx - y_lo) / max(y_hi - y_lo, 1.0)
    t = np.interp(z_idx, np.arange(lung.shape[0]), lung_t)
    fissure_t = 0.25 + 0.45 * y_rel + float(rng.uniform(-0.05, 0.05))
    lower = rng.uniform() < 0.7
    lobe = lung & ((t < fissure_t) if lower else (t >= fissure_t))
    if not lobe.any():
        lobe = lung
    fill = ndimage.gaussian_filter(lobe.astype(np.float32), sigma=1.0)
    # spare part of the lobe so it is not always a full lobe
    spare = _box_noise(lobe.shape, rng) > float(rng.uniform(0.6, 1.5))
    weight = np.clip(fill * 1.6 - 0.3, 0.0, 1.0) * ~spare * lobe
    target = float(rng.uniform(-40.0, 45.0)) + 15.0 * _box_noise(lobe.shape, rng)
    blended = vol * (1.0 - weight) + target * weight
    np.copyto(vol, np.maximum(vol, blended).astype(np.float32), where=lobe)
    mask = weight > LESION_MASK_WEIGHT_MIN
    if mask.any():
        zs_m, ys_m, xs_m = np.nonzero(mask)
        c = (float(zs_m.mean()), float(ys_m.mean()), float(xs_m.mean()))
    else:
        c = (0.0, 0.0, 0.0)
    return mask, [LesionSpec("lobar-consolidation", c, (0.0, 0.0, 0.0), float(np.mean(target)))]


def central_mass(
    vol: npt.NDArray[np.float32],
    lungs: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]],
    hila_zyx: tuple[tuple[float, float, float], ...],
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.bool_], list[LesionSpec]]:
    """One round, sharply marginated soft-tissue mass near a hilum (e.g. a central carcinoma)."""
    side = int(rng.integers(0, 2))
    hz, hy, hx = hila_zyx[side]
    lung = lungs[side]
    offset_mm = rng.normal(0.0, 12.0, 3) + np.array([0.0, 0.0, (1 if side else -1) * 25.0])
    centre = (hz + offset_mm[0] / spacing_mm[0], hy + offset_mm[1] / spacing_mm[1],
              hx + offset_mm[2] / spacing_mm[2])
    r = float(rng.uniform(12.0, 30.0))
    spec = LesionSpec("mass", centre, (r, r * float(rng.uniform(0.85, 1.15)), r),
                      float(rng.uniform(*hu.MASS_HU_RANGE)))
    mask = apply_blob(vol, lung, spacing_mm, spec, edge_fraction=0.08, texture_sd_hu=8.0, rng=rng)
    return mask, [spec]


def dependent_atelectasis(
    vol: npt.NDArray[np.float32],
    lungs: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]],
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> npt.NDArray[np.bool_]:
    """Thin posterior subpleural density band in both lungs, a normal finding (a hard negative)."""
    union = lungs[0] | lungs[1]
    # distance from the posterior lung border along y
    back = np.flip(np.cumsum(np.flip(union, axis=1), axis=1), axis=1) * spacing_mm[1]
    thickness = float(rng.uniform(2.0, 6.0))
    band = union & (back <= thickness)
    weight = ndimage.gaussian_filter(band.astype(np.float32), sigma=0.8) * union
    target = float(rng.uniform(-650.0, -450.0))
    blended = vol * (1.0 - weight) + target * weight
    np.copyto(vol, np.maximum(vol, blended).astype(np.float32), where=union)
    return weight > LESION_MASK_WEIGHT_MIN
