"""One synthetic chest CT case: anatomy + lesions of the requested kind + CT blur and noise."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.synthetic import anatomy, lesions, realism

logger = logging.getLogger(__name__)

CASE_KINDS = ("covid", "cap", "mass", "normal")
GENERATOR_VERSIONS = (1, 2)
COVID_LABEL = "covid19"
NON_COVID_LABEL = "non-covid"
FOV_MARGIN_MM = 30.0
PSF_SIGMA_MM = 0.5
HU_MIN = -1024.0
HU_MAX = 3071.0


@dataclass(frozen=True)
class PhantomCase:
    """A synthetic CT volume with its ground truth.

    ``hu`` is float32 (z, y, x) with z index 0 the most caudal slice; ``spacing_mm`` is (z, y, x).
    ``label`` is the binary classification target ("covid19" or "non-covid"), ``kind`` the finer
    generator category (covid, cap, mass, normal).
    """

    hu: npt.NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    lung_left: npt.NDArray[np.bool_]
    lung_right: npt.NDArray[np.bool_]
    lesion_mask: npt.NDArray[np.bool_]
    kind: str
    label: str
    seed: int
    lesion_kinds: tuple[str, ...]
    version: int = 1  # the generator version (``training.synthetic.realism`` is version 2)

    @property
    def lungs(self) -> npt.NDArray[np.bool_]:
        return self.lung_left | self.lung_right

    @property
    def is_covid(self) -> bool:
        return self.label == COVID_LABEL


def generate_case(
    seed: int,
    kind: str | None = None,
    matrix: int | None = None,
    slice_spacing_mm: float | tuple[float, float] | None = None,
    noise_sd_hu: float | None = None,
    covid_severity: float | None = None,
    version: int = 1,
) -> PhantomCase:
    """Generate the case for ``seed`` (deterministic). ``kind`` None draws one of CASE_KINDS.

    ``matrix`` (256 or 512; None draws one) is the in-plane size; the pixel spacing follows from a
    field of view fitted to the body (0.66-0.82 mm at 512, twice that at 256).
    ``slice_spacing_mm`` is a value or a (low, high) range to draw from (default 1-3 mm, 1-5 mm
    for version 2). ``version`` 1 is the generator the shipped models trained on; version 2 adds
    fissures, nodules, effusions, partial inspiration and reconstruction kernels
    (``training.synthetic.realism``); for a given seed, version 1 is unchanged.
    """
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"unknown phantom generator version {version}; use {GENERATOR_VERSIONS}")
    if slice_spacing_mm is None:
        slice_spacing_mm = realism.SLICE_RANGE_MM if version == 2 else (1.0, 3.0)
    rng = np.random.default_rng(seed)
    if kind is None:
        kind = str(rng.choice(CASE_KINDS, p=[0.5, 0.2, 0.1, 0.2]))
    if kind not in CASE_KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {CASE_KINDS}")
    if matrix is None:
        matrix = int(rng.choice([256, 512]))
    if matrix < 64:
        raise ValueError(f"matrix must be >= 64, got {matrix}")
    if isinstance(slice_spacing_mm, tuple):
        dz = float(rng.uniform(*slice_spacing_mm))
    else:
        dz = float(slice_spacing_mm)
    if not 0.3 <= dz <= 10.0:
        raise ValueError(f"slice spacing must be 0.3-10 mm, got {dz}")

    geom = anatomy.random_geometry(rng)
    fov_mm = max(float(rng.uniform(340.0, 420.0)), 2.0 * geom.body_half_width_mm + FOV_MARGIN_MM)
    pixel_mm = fov_mm / 512.0 * (512.0 / matrix)
    coverage_mm = geom.lung_base_mm + geom.lung_height_mm + float(rng.uniform(10.0, 40.0))
    nz = max(8, int(round(coverage_mm / dz)))
    spacing = (dz, pixel_mm, pixel_mm)
    shape = (nz, matrix, matrix)

    body = anatomy.build_anatomy(shape, spacing, geom, rng)
    vol = body.hu
    lungs = (body.lung_right, body.lung_left)
    lesion_mask = np.zeros(shape, dtype=bool)
    kinds: tuple[str, ...] = ()
    if kind == "covid":
        lesion_mask, specs = lesions.covid_lesions(vol, lungs, spacing, rng, covid_severity)
        kinds = tuple(s.kind for s in specs)
    elif kind == "cap":
        lesion_mask, specs = lesions.lobar_consolidation(vol, lungs, body.lung_t, spacing, rng)
        kinds = tuple(s.kind for s in specs)
    elif kind == "mass":
        lesion_mask, specs = lesions.central_mass(vol, lungs, body.hila_zyx, spacing, rng)
        kinds = tuple(s.kind for s in specs)
    if kind != "covid" and rng.uniform() < 0.35:
        lesions.dependent_atelectasis(vol, lungs, spacing, rng)
        kinds = (*kinds, "atelectasis")

    if version == 2:
        kinds = (*kinds, *_realism(vol, body, lesion_mask, spacing, rng))
    if version == 2 and noise_sd_hu is None:
        vol, kernel = realism.image_formation(vol, spacing, rng, (HU_MIN, HU_MAX))
        kinds = (*kinds, f"kernel-{kernel}")
    else:
        vol = _image_formation(vol, spacing, rng, noise_sd_hu)
    logger.debug("phantom seed=%d kind=%s shape=%s spacing=%s", seed, kind, shape, spacing)
    return PhantomCase(
        hu=vol,
        spacing_mm=spacing,
        lung_left=body.lung_left,
        lung_right=body.lung_right,
        lesion_mask=lesion_mask & (body.lung_left | body.lung_right),
        kind=kind,
        label=COVID_LABEL if kind == "covid" else NON_COVID_LABEL,
        seed=seed,
        lesion_kinds=kinds,
        version=version,
    )


def _image_formation(
    vol: npt.NDArray[np.float32], spacing: tuple[float, float, float], rng: np.random.Generator,
    noise_sd_hu: float | None,
) -> npt.NDArray[np.float32]:
    """Version 1's CT image formation: point-spread blur, then slightly correlated noise."""
    sigma_vox = [min(PSF_SIGMA_MM / s, 1.0) for s in spacing]
    vol = ndimage.gaussian_filter(vol, sigma=sigma_vox)
    sd = float(rng.uniform(12.0, 30.0)) if noise_sd_hu is None else float(noise_sd_hu)
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.6, 0.6))
    noise *= sd / (float(noise.std()) or 1.0)
    return np.clip(vol + noise, HU_MIN, HU_MAX).astype(np.float32)


def _realism(
    vol: npt.NDArray[np.float32], body: anatomy.Anatomy, lesion_mask: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float], rng: np.random.Generator,
) -> tuple[str, ...]:
    """Version 2's additions (see ``training.synthetic.realism``); the names of what was added."""
    added: list[str] = ["fissures"]
    realism.add_fissures(vol, (body.lung_right, body.lung_left), spacing, rng)
    free_lung = (body.lung_right | body.lung_left) & ~lesion_mask
    placed = realism.add_nodules(vol, free_lung, spacing, rng, int(rng.integers(0, 4)))
    added += ["nodule"] * placed
    if rng.uniform() < 0.2:
        realism.add_effusion(vol, body.lung_right if rng.uniform() < 0.5 else body.lung_left,
                             spacing, rng)
        added.append("effusion")
    if rng.uniform() < 0.3:
        realism.partial_inspiration(vol, body.lung_right | body.lung_left, rng)
        added.append("partial-inspiration")
    return tuple(added)
