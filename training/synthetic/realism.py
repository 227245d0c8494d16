"""Phantom generator version 2: real-anatomy details and findings that look like lesions.

Issue 8 asks the phantoms to teach real anatomy and to show the networks negatives that look
like findings. Version 1 (the phantoms the shipped models trained on) has hila, tapering vessel
trees, central airways, a gravity gradient, dependent atelectasis, masses, 1-3 mm slices and
one reconstruction. Version 2 adds, after the lesions are placed and before image formation:

- major fissures: a thin oblique sheet of higher density through each lung (inside the lung);
- solid nodules (3-12 mm, soft tissue) in any kind of case, never part of the lesion mask;
- pleural effusion: a dependent crescent of fluid at a lung base, taken out of the lung mask;
- partial inspiration: a denser parenchyma (+0-70 HU);
- a reconstruction kernel (smooth, standard or sharp: blur and noise texture) and slices of
  1-5 mm (``SLICE_RANGE_MM``).

It stays opt-in (``generate_case(..., version=2)``, ``make-data --phantom-version 2``) so that
the shipped models' training data can be regenerated exactly; no model was trained on it yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.synthetic import hu

SLICE_RANGE_MM = (1.0, 5.0)
FISSURE_HALF_THICKNESS_MM = 0.6
FISSURE_HU = -350.0
NODULE_HU = (20.0, 60.0)
EFFUSION_HU = (0.0, 20.0)


@dataclass(frozen=True)
class Kernel:
    """How one reconstruction looks: point-spread blur, noise level and noise correlation."""

    name: str
    psf_sigma_mm: float
    noise_sd_hu: tuple[float, float]
    noise_corr_px: float


KERNELS = (
    Kernel("smooth", 0.9, (8.0, 18.0), 1.0),
    Kernel("standard", 0.5, (12.0, 30.0), 0.6),
    Kernel("sharp", 0.25, (30.0, 60.0), 0.3),
)


def _box(mask: npt.NDArray[np.bool_]) -> tuple[slice, slice, slice] | None:
    """The bounding box of ``mask``, or None when it is empty."""
    where = np.argwhere(mask)
    if where.size == 0:
        return None
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])),
            slice(int(lo[2]), int(hi[2])))


def add_fissures(
    vol: npt.NDArray[np.float32], lungs: tuple[npt.NDArray[np.bool_], ...],
    spacing: tuple[float, float, float], rng: np.random.Generator,
) -> None:
    """An oblique plane through each lung: from high and posterior to low and anterior."""
    for lung in lungs:
        box = _box(lung)
        if box is None:
            continue
        z = (np.arange(box[0].start, box[0].stop) * spacing[0])[:, None, None]
        y = (np.arange(box[1].start, box[1].stop) * spacing[1])[None, :, None]
        tilt = np.deg2rad(float(rng.uniform(35.0, 60.0)))
        # signed distance (mm) to a plane through the box's centre, containing the x axis
        dist = (z - float(z.mean())) * np.cos(tilt) - (y - float(y.mean())) * np.sin(tilt)
        sheet = np.abs(dist) <= FISSURE_HALF_THICKNESS_MM + 0.5 * float(spacing[0])
        sheet = np.broadcast_to(sheet, lung[box].shape) & lung[box]
        region = vol[box]
        region[sheet] = np.maximum(region[sheet], FISSURE_HU)


def add_nodules(
    vol: npt.NDArray[np.float32], lungs: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float], rng: np.random.Generator, count: int,
) -> int:
    """``count`` solid round nodules inside the lungs; returns how many were placed."""
    candidates = np.argwhere(ndimage.binary_erosion(lungs, iterations=2))
    placed = 0
    if candidates.size == 0:
        return 0
    for _ in range(count):
        centre = candidates[int(rng.integers(len(candidates)))]
        radius_mm = float(rng.uniform(1.5, 6.0))
        r_vox = [max(1, int(np.ceil(radius_mm / s))) for s in spacing]
        lo = np.maximum(centre - r_vox, 0)
        hi = np.minimum(centre + np.asarray(r_vox) + 1, vol.shape)
        box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])),
               slice(int(lo[2]), int(hi[2])))
        zz, yy, xx = np.meshgrid(*[(np.arange(lo[i], hi[i]) - centre[i]) * spacing[i]
                                   for i in range(3)], indexing="ij")
        ball = (zz**2 + yy**2 + xx**2 <= radius_mm**2) & lungs[box]
        region = vol[box]
        region[ball] = float(rng.uniform(*NODULE_HU))
        placed += 1
    return placed


def add_effusion(
    vol: npt.NDArray[np.float32], lung: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float], rng: np.random.Generator,
) -> None:
    """Fluid in the dependent (posterior, high y) part of a lung's lower third, out of the mask."""
    where = np.argwhere(lung)
    if where.size == 0:
        return
    z_lo, z_hi = int(where[:, 0].min()), int(where[:, 0].max())
    top = z_lo + max(1, int((z_hi - z_lo) * float(rng.uniform(0.15, 0.35))))
    depth_mm = float(rng.uniform(10.0, 35.0))
    for z in range(z_lo, top + 1):
        rows = np.argwhere(lung[z])
        if rows.size == 0:
            continue
        back = rows[:, 0].max()  # most posterior row of the lung on this slice
        taper = 1.0 - (z - z_lo) / max(1, top - z_lo)  # deepest at the base
        cut = back - int(depth_mm * taper / spacing[1])
        fluid = lung[z].copy()
        fluid[: max(cut, 0)] = False
        vol[z][fluid] = float(rng.uniform(*EFFUSION_HU))
        lung[z] &= ~fluid


def partial_inspiration(
    vol: npt.NDArray[np.float32], lungs: npt.NDArray[np.bool_], rng: np.random.Generator
) -> None:
    """A less inflated lung is denser everywhere."""
    vol[lungs & (vol < hu.AIR_HU + 600.0)] += float(rng.uniform(0.0, 70.0))


def image_formation(
    vol: npt.NDArray[np.float32], spacing: tuple[float, float, float],
    rng: np.random.Generator, hu_range: tuple[float, float],
) -> tuple[npt.NDArray[np.float32], str]:
    """Blur and noise of a randomly drawn reconstruction kernel; the image and the kernel's name."""
    kernel = KERNELS[int(rng.integers(len(KERNELS)))]
    sigma_vox = [min(kernel.psf_sigma_mm / s, 1.5) for s in spacing]
    out = ndimage.gaussian_filter(vol, sigma=sigma_vox)
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, kernel.noise_corr_px, kernel.noise_corr_px))
    noise *= float(rng.uniform(*kernel.noise_sd_hu)) / (float(noise.std()) or 1.0)
    return np.clip(out + noise, *hu_range).astype(np.float32), kernel.name
