"""Thoracic anatomy of the synthetic phantom: body wall, bones, mediastinum, airways, lungs.

Geometry is built in millimetres on a (z, y, x) grid where z grows cranially (index 0 is the most
caudal slice, as in ``pipeline.types.CTVolume``), y grows posteriorly (DICOM rows) and x grows
towards the patient's left (DICOM columns), so the left lung lies at large x.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from pipeline.preprocessing import resize
from training.synthetic import hu

logger = logging.getLogger(__name__)

VESSEL_TREE_DEPTH = 5
VESSEL_ROOT_RADIUS_MM = 5.5
VESSEL_TAPER = 0.72
VESSEL_ROOT_LENGTH_MM = 38.0
VESSEL_MIN_RADIUS_MM = 0.7
TRACHEA_RADIUS_MM = 9.0
BRONCHUS_RADIUS_MM = 6.5
AIRWAY_WALL_MM = 2.0


@dataclass(frozen=True)
class Geometry:
    """Random anatomical sizes of one phantom, in millimetres."""

    body_half_width_mm: float
    body_half_depth_mm: float
    fat_mm: float
    muscle_mm: float
    lung_height_mm: float
    lung_base_mm: float  # z (from the first slice) of the lowest point of the lungs
    left_lung_scale: float

    @property
    def cavity_half_width_mm(self) -> float:
        return self.body_half_width_mm - self.fat_mm - self.muscle_mm

    @property
    def cavity_half_depth_mm(self) -> float:
        return self.body_half_depth_mm - self.fat_mm - self.muscle_mm


@dataclass
class Anatomy:
    """HU volume of the healthy chest plus the masks the lesion code needs."""

    hu: npt.NDArray[np.float32]
    lung_left: npt.NDArray[np.bool_]
    lung_right: npt.NDArray[np.bool_]
    lung_t: npt.NDArray[np.float32]  # per-slice height in the lung, 0 = base, 1 = apex (nz,)
    hila_zyx: tuple[tuple[float, float, float], tuple[float, float, float]]  # right, left (voxels)


def smooth_noise(
    shape: tuple[int, ...], coarse: tuple[int, ...], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Zero-mean, unit-sd, spatially smooth noise: a coarse random grid upsampled (separable
    linear interpolation, much cheaper than ``ndimage.zoom`` on large volumes)."""
    grid = rng.standard_normal(coarse).astype(np.float32)
    field = resize(grid, tuple(shape), order=1)
    sd = float(field.std()) or 1.0
    return ((field - field.mean()) / sd).astype(np.float32)


@lru_cache(maxsize=256)
def _ball_offsets(rz: float, ry: float, rx: float) -> npt.NDArray[np.int64]:
    """Integer (dz, dy, dx) offsets of an ellipsoid with the given voxel radii."""
    iz, iy, ix = (int(np.ceil(r)) for r in (rz, ry, rx))
    z, y, x = np.mgrid[-iz : iz + 1, -iy : iy + 1, -ix : ix + 1]
    inside = (z / max(rz, 0.5)) ** 2 + (y / max(ry, 0.5)) ** 2 + (x / max(rx, 0.5)) ** 2 <= 1.0
    return np.stack([z[inside], y[inside], x[inside]], axis=1)


def stamp_tube(
    target: npt.NDArray[np.bool_],
    start_mm: npt.NDArray[np.float64],
    end_mm: npt.NDArray[np.float64],
    radius_mm: float,
    spacing_mm: tuple[float, float, float],
) -> None:
    """Set every voxel within ``radius_mm`` of the segment start..end (z, y, x in mm) to True."""
    spacing = np.asarray(spacing_mm)
    length = float(np.linalg.norm(end_mm - start_mm))
    step_mm = max(0.5 * radius_mm, 0.5 * float(spacing.min()))
    n = max(2, int(np.ceil(length / step_mm)) + 1)
    centres = np.linspace(start_mm, end_mm, n) / spacing
    offsets = _ball_offsets(*(round(radius_mm / s, 2) for s in spacing_mm))
    points = (np.rint(centres)[:, None, :] + offsets[None, :, :]).reshape(-1, 3).astype(np.int64)
    shape = np.asarray(target.shape)
    keep = np.all((points >= 0) & (points < shape), axis=1)
    points = points[keep]
    target[points[:, 0], points[:, 1], points[:, 2]] = True


def random_geometry(rng: np.random.Generator, coverage_mm: float | None = None) -> Geometry:
    """Draw adult chest sizes (half-width 135-175 mm, lung height 190-260 mm...)."""
    height = float(rng.uniform(190.0, 260.0))
    return Geometry(
        body_half_width_mm=float(rng.uniform(135.0, 175.0)),
        body_half_depth_mm=float(rng.uniform(95.0, 130.0)),
        fat_mm=float(rng.uniform(5.0, 22.0)),
        muscle_mm=float(rng.uniform(8.0, 16.0)),
        lung_height_mm=height,
        lung_base_mm=float(rng.uniform(15.0, 45.0)),
        left_lung_scale=float(rng.uniform(0.85, 0.95)),
    )


def build_anatomy(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    geometry: Geometry,
    rng: np.random.Generator,
) -> Anatomy:
    """Render the healthy chest: HU volume without noise and the left/right lung masks."""
    nz, ny, nx = shape
    dz, dy, dx = spacing_mm
    g = geometry
    z = (np.arange(nz, dtype=np.float32) * dz)[:, None, None]
    y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2.0) * dy)[None, :, None]
    x = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2.0) * dx)[None, None, :]
    shift_mm = float(rng.uniform(-0.05, 0.08)) * ny * dy  # body not always centred in the FOV
    y = y - shift_mm
    # body-frame (z, y, x) mm -> grid mm (origin at voxel 0), the frame stamp_tube works in
    to_grid = np.array([0.0, shift_mm + (ny - 1) / 2.0 * dy, (nx - 1) / 2.0 * dx])

    # --- body wall: fat, muscle, then the cavity filled with soft tissue (mediastinum) ---
    wobble = 1.0 + 0.04 * np.sin(z / 60.0 + float(rng.uniform(0, 6.28)))
    a_body = g.body_half_width_mm * wobble
    b_body = g.body_half_depth_mm * wobble * np.where(y > 0, 0.92, 1.0)
    r_body = np.sqrt((x / a_body) ** 2 + (y / b_body) ** 2)
    scale_in = np.minimum(a_body, b_body)
    depth_mm = (1.0 - r_body) * scale_in  # approximate distance inside the skin
    body = r_body <= 1.0
    vol = np.full(shape, hu.AIR_HU, dtype=np.float32)
    vol[body] = hu.FAT_HU
    muscle = body & (depth_mm >= g.fat_mm)
    vol[muscle] = hu.MUSCLE_HU
    cavity = body & (depth_mm >= g.fat_mm + g.muscle_mm)
    vol[cavity] = hu.SOFT_TISSUE_HU

    a_in = g.cavity_half_width_mm
    b_in = g.cavity_half_depth_mm

    # --- lungs ---
    t = ((z - g.lung_base_mm) / g.lung_height_mm).astype(np.float32)  # 0 base .. 1 apex
    boundary_noise = smooth_noise(shape, (max(2, nz // 24), 6, 6), rng) * 0.06
    lungs: list[npt.NDArray[np.bool_]] = []
    hila: list[tuple[float, float, float]] = []
    for side in (-1.0, 1.0):  # -1 right lung (small x), +1 left lung
        size = g.left_lung_scale if side > 0 else 1.0
        cx = side * a_in * float(rng.uniform(0.47, 0.52))
        cy = b_in * float(rng.uniform(0.0, 0.10))
        ax = a_in * float(rng.uniform(0.41, 0.46)) * size
        ay = b_in * float(rng.uniform(0.78, 0.86))
        apex_start = 0.62
        sc = np.where(
            t > apex_start,
            np.sqrt(np.clip(1.0 - ((t - apex_start) / (1.0 - apex_start)) ** 2, 0.0, 1.0)),
            1.0,
        )
        sc = np.maximum(sc, 1e-3)
        medial = side * (x - cx) < 0
        ax_eff = np.where(medial, 0.72 * ax, ax) * sc
        # apex drifts posteriorly and medially
        cy_t = cy + 0.12 * b_in * np.clip(t - apex_start, 0.0, 1.0)
        rr = ((x - cx) / ax_eff) ** 2 + ((y - cy_t) / (ay * sc)) ** 2
        rr_full = ((x - cx) / np.where(medial, 0.72 * ax, ax)) ** 2 + ((y - cy) / ay) ** 2
        dome = 0.20 * np.clip(1.0 - rr_full, 0.0, 1.0) - 0.04 * ((y - cy) / ay)
        lung = (rr + boundary_noise < 1.0) & (t > dome) & (t < 1.0) & cavity
        lungs.append(lung)
        hila.append(
            (g.lung_base_mm + 0.52 * g.lung_height_mm, cy - 0.05 * ay, cx - side * 0.55 * ax)
        )

    # heart and descending aorta carve the lungs
    heart_c = (g.lung_base_mm + 0.22 * g.lung_height_mm, -0.30 * b_in, 0.10 * a_in)
    heart_r = (0.26 * g.lung_height_mm, 0.42 * b_in, 0.34 * a_in)
    heart = (
        ((z - heart_c[0]) / heart_r[0]) ** 2
        + ((y - heart_c[1]) / heart_r[1]) ** 2
        + ((x - heart_c[2]) / heart_r[2]) ** 2
    ) <= 1.0
    aorta = ((y - 0.45 * b_in) ** 2 + (x - 0.16 * a_in) ** 2 <= 13.0**2) & (
        t < 0.78
    )
    spine_cy = 0.82 * b_in
    spine = (y - spine_cy) ** 2 + x**2 <= 19.0**2
    blocked = heart | aorta | spine
    lung_right = lungs[0] & ~blocked
    lung_left = lungs[1] & ~blocked
    lung_any = lung_right | lung_left
    vol[heart | aorta] = hu.BLOOD_HU

    # --- parenchyma with gravity gradient and texture ---
    texture = smooth_noise(shape, (max(2, nz // 3), ny // 4, nx // 4), rng)
    gradient = 55.0 * np.clip(y / max(b_in, 1.0), -1.0, 1.0)
    parenchyma = hu.LUNG_PARENCHYMA_HU + gradient + 22.0 * texture
    vol = np.where(lung_any, parenchyma, vol).astype(np.float32)

    # --- pulmonary vessels: a tapering random tree from each hilum, clipped to the lung ---
    vessels = np.zeros(shape, dtype=bool)
    for hilum in hila:
        side = 1.0 if hilum[2] > 0 else -1.0
        root = np.asarray(hilum, dtype=np.float64) + to_grid
        for direction in ((1.0, 0.1, 0.5), (0.5, -0.6, 0.6), (0.0, 0.3, 1.0), (0.0, -0.7, 0.5),
                          (-1.0, 0.2, 0.5), (-0.7, 0.7, 0.4)):
            d = np.asarray(direction) * np.array([1.0, 1.0, side])
            _grow_vessel(vessels, root, d, VESSEL_ROOT_RADIUS_MM, VESSEL_ROOT_LENGTH_MM, 0,
                         spacing_mm, rng)
    vessels &= lung_any
    vol[vessels] = hu.BLOOD_HU + rng.normal(0.0, 8.0)

    # --- airways: trachea, carina, main bronchi to each hilum (air with a soft-tissue wall) ---
    airway = np.zeros(shape, dtype=bool)
    wall = np.zeros(shape, dtype=bool)
    carina = np.array([g.lung_base_mm + 0.60 * g.lung_height_mm, -0.08 * b_in, 0.0]) + to_grid
    top = np.array([nz * dz + 10.0, -0.15 * b_in, 0.0]) + to_grid
    stamp_tube(wall, top, carina, TRACHEA_RADIUS_MM + AIRWAY_WALL_MM, spacing_mm)
    stamp_tube(airway, top, carina, TRACHEA_RADIUS_MM, spacing_mm)
    for hilum in hila:
        h = np.asarray(hilum) + to_grid
        stamp_tube(wall, carina, h, BRONCHUS_RADIUS_MM + AIRWAY_WALL_MM, spacing_mm)
        stamp_tube(airway, carina, h, BRONCHUS_RADIUS_MM, spacing_mm)
    wall &= ~airway
    vol[wall & ~lung_any] = hu.SOFT_TISSUE_HU
    vol[airway] = hu.AIR_HU
    lung_right &= ~airway
    lung_left &= ~airway

    # --- bones: spine (vertebral bodies, discs, canal, posterior arch), ribs, sternum ---
    vert_phase = float(rng.uniform(0, 25.0))
    disc = np.mod(z + vert_phase, 25.0) < 4.0
    bone_hu = float(rng.uniform(250.0, 450.0))
    vol = np.where(spine & disc, 80.0, np.where(spine, bone_hu, vol)).astype(np.float32)
    cortex = spine & ((y - spine_cy) ** 2 + x**2 >= 16.0**2) & ~disc
    vol[cortex] = hu.CORTICAL_BONE_HU
    canal = ((y - spine_cy - 28.0) ** 2 + x**2 <= 8.0**2) & body
    arch = (((y - spine_cy - 34.0) / 16.0) ** 2 + (x / 24.0) ** 2 <= 1.0) & ~canal & body
    vol[arch] = bone_hu + 150.0
    vol[canal] = 15.0
    phi = np.arctan2(x, y)  # 0 posterior midline, +-pi anterior
    rib_period = float(rng.uniform(26.0, 34.0))
    rib_z = z + 55.0 * (1.0 - np.cos(phi)) / 2.0 + float(rng.uniform(0, rib_period))
    rib_band = (depth_mm >= g.fat_mm + 0.3 * g.muscle_mm) & (
        depth_mm < g.fat_mm + 0.3 * g.muscle_mm + 11.0
    )
    ribs = rib_band & (np.mod(rib_z, rib_period) < 9.0) & (np.abs(phi) < 2.7) & (t < 1.05)
    ribs &= np.abs(phi) > 0.35  # not over the spine
    vol[ribs] = bone_hu + 250.0
    sternum = (((y + b_in + 0.5 * g.muscle_mm) / 8.0) ** 2 + (x / 16.0) ** 2 <= 1.0) & (
        t > 0.15
    ) & (t < 0.85)
    vol[sternum] = bone_hu + 200.0

    lung_t = ((np.arange(nz) * dz - g.lung_base_mm) / g.lung_height_mm).astype(np.float32)
    hila_vox: list[tuple[float, float, float]] = []
    for h in hila:
        hz, hy, hx = (np.asarray(h) + to_grid) / np.asarray(spacing_mm)
        hila_vox.append((float(hz), float(hy), float(hx)))
    return Anatomy(
        hu=vol.astype(np.float32),
        lung_left=np.ascontiguousarray(lung_left),
        lung_right=np.ascontiguousarray(lung_right),
        lung_t=lung_t,
        hila_zyx=(hila_vox[0], hila_vox[1]),
    )


def _grow_vessel(
    vessels: npt.NDArray[np.bool_],
    start_mm: npt.NDArray[np.float64],
    direction: npt.NDArray[np.float64],
    radius_mm: float,
    length_mm: float,
    depth: int,
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> None:
    """Draw one vessel segment, then recurse into two thinner, shorter, deviating branches."""
    if depth > VESSEL_TREE_DEPTH or radius_mm < VESSEL_MIN_RADIUS_MM:
        return
    d = direction / (np.linalg.norm(direction) + 1e-9)
    d = d + rng.normal(0.0, 0.25, 3)
    d /= np.linalg.norm(d) + 1e-9
    end = start_mm + d * length_mm * float(rng.uniform(0.8, 1.2))
    stamp_tube(vessels, start_mm, end, radius_mm, spacing_mm)
    for _ in range(2):
        _grow_vessel(vessels, end, d + rng.normal(0.0, 0.6, 3), radius_mm * VESSEL_TAPER,
                     length_mm * 0.78, depth + 1, spacing_mm, rng)
