"""Real studies as DeCoVNet training cases: prepared volumes with slice-level weak labels.

A real study goes through the production path of the phantom inputs (U-Net lungs with the
clean-up, ``preprocessing.decovnet_input``), and its slice-level infection labels are carried to
the crop's 1-mm slices as ``slice_label``: 1 where the COVID-class activation must fire somewhere
(infection-labelled slices of a COVID-19 study), 0 where it must stay at zero (every slice
labelled clean, and every slice of a study that is not COVID-19: its findings are not COVID).
Copies with synthetic lesions inserted into the clean lung (``training.insertion``) add real
anatomy with voxel-level targets.

Leave-one-study-out: :func:`select_names` drops the held-out study *before* any file is read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.preprocessing import decovnet_input, resize, sample_axis
from pipeline.types import CTVolume, LungMask
from training.insertion import insert_lesions
from training.real_data import COVID_CT_MD_DIR, RealCase, load_real_cases, real_case_names
from training.train_decovnet import PreparedVolume, save_prepared

logger = logging.getLogger(__name__)

MUST_FIRE = 1  # slice_label: the COVID-class activation must fire somewhere on this slice
MUST_STAY_ZERO = 0  # slice_label: no COVID-class activation outside inserted lesions
LESION_TARGET_MIN_SHARE = 0.5
# (kind, seed) of the lesion-inserted copies per study; "cap" copies stay non-COVID
INSERTIONS: tuple[tuple[str, int], ...] = (("covid", 0), ("covid", 1), ("cap", 2))
REAL_SEED_BASE = 7_000_000  # seeds of prepared real volumes, disjoint from the phantom seeds


@dataclass(frozen=True)
class RealPrepared:
    """A real (possibly lesion-inserted) study in DeCoVNet's crop space."""

    name: str
    label: int  # 1 = COVID-19 (the study's label, or COVID-like lesions inserted)
    image: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.uint8]
    lesion: npt.NDArray[np.uint8]  # inserted COVID-like lesion voxels (0 for "cap" insertions)
    slice_label: npt.NDArray[np.int8]  # MUST_FIRE / MUST_STAY_ZERO per crop slice


def select_names(
    available: Sequence[str], wanted: str | Sequence[str], leave_out: Sequence[str] = (),
) -> list[str]:
    """The study names to train on: ``wanted`` ("all", "none" or names) minus ``leave_out``."""
    if isinstance(wanted, str):
        wanted = list(available) if wanted == "all" else [] if wanted == "none" else [wanted]
    unknown = sorted((set(wanted) | set(leave_out)) - set(available))
    if unknown:
        raise ValueError(f"unknown real studies {unknown}; available: {list(available)}")
    held = set(leave_out)
    return [n for n in available if n in wanted and n not in held]


def lungs_cache_file(work_dir: Path, name: str) -> Path:
    return work_dir / "real" / f"lungs_{name}.npz"


def production_lungs(case: RealCase, work_dir: Path) -> LungMask:
    """The production U-Net lungs (with the clean-up) of a real study, cached under ``work_dir``
    (the U-Net is not retrained here, so every fold and the scoring share them)."""
    path = lungs_cache_file(work_dir, case.name)
    if path.exists():
        with np.load(path) as d:
            if d["left"].shape == case.volume.shape:
                return LungMask(left=d["left"], right=d["right"], method=str(d["method"]))
    from pipeline.stages.lung_unet import UNetLungSegmenter

    lungs = UNetLungSegmenter(device="cpu").segment(case.volume)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, left=lungs.left, right=lungs.right, method=lungs.method)
    return lungs


def volume_slice_labels(case: RealCase) -> npt.NDArray[np.int8]:
    """Per volume slice: MUST_FIRE on infection-labelled slices of a COVID-19 study, else 0."""
    labels = np.full(case.volume.shape[0], MUST_STAY_ZERO, dtype=np.int8)
    if case.covid_positive:
        for z in case.infected_volume_slices():
            labels[z] = MUST_FIRE
    return labels


def prepare_real(
    name: str, volume: CTVolume, lungs: LungMask, slice_labels: npt.NDArray[np.int8],
    label: int, crop_px: tuple[int, int],
    lesion: npt.NDArray[np.bool_] | None = None,
) -> RealPrepared:
    """The crop-space input of a real volume; slice labels follow the nearest source slice."""
    prepared = decovnet_input(volume.hu, lungs.both, volume.spacing_mm[0], crop_px)
    geo = prepared.geometry
    src = geo.box.z0 + np.clip(np.rint(geo.z_coords).astype(int), 0, geo.box.shape[0] - 1)
    if lesion is not None and lesion.any():
        box = lesion[geo.box.slices].astype(np.float32)
        crop_lesion = resize(sample_axis(box, 0, geo.z_coords, order=1), crop_px, order=1)
        crop_lesion = crop_lesion >= LESION_TARGET_MIN_SHARE
    else:
        crop_lesion = np.zeros(prepared.array.shape[1:], dtype=bool)
    arr = prepared.array
    return RealPrepared(
        name=name, label=label,
        image=np.rint(arr[0] * 255.0).astype(np.uint8),
        mask=(arr[1] > 0.5).astype(np.uint8),
        lesion=crop_lesion.astype(np.uint8),
        slice_label=slice_labels[src].astype(np.int8),
    )


def inserted_copy(
    case: RealCase, lungs: LungMask, kind: str, seed: int, crop_px: tuple[int, int],
) -> RealPrepared:
    """A copy of ``case`` with ``kind`` lesions inserted into its clean lung (slices not
    labelled infected). COVID-like insertions make the copy COVID-19 and are voxel targets."""
    labels = volume_slice_labels(case)
    infected = np.zeros(case.volume.shape[0], dtype=bool)
    infected[sorted(case.infected_volume_slices())] = True
    clean = ~infected[:, None, None]
    result = insert_lesions(case.volume.hu, case.volume.spacing_mm, lungs.left & clean,
                            lungs.right & clean, seed=seed, kind=kind)
    volume = replace(case.volume, hu=result.hu)
    covid_like = kind == "covid"
    label = 1 if covid_like or case.covid_positive else 0
    return prepare_real(f"{case.name}+{kind}{seed}", volume, lungs, labels, label, crop_px,
                        lesion=result.lesion_mask if covid_like else None)


def build_real_cases(
    work_dir: Path, names: Sequence[str], crop_px: tuple[int, int],
    insertions: Sequence[tuple[str, int]] = INSERTIONS, root: Path = COVID_CT_MD_DIR,
) -> list[RealPrepared]:
    """The prepared volumes of the named studies: each study as it is, plus its insertions."""
    out: list[RealPrepared] = []
    for case in load_real_cases(root, names=names):
        lungs = production_lungs(case, work_dir)
        out.append(prepare_real(case.name, case.volume, lungs, volume_slice_labels(case),
                                int(case.covid_positive), crop_px))
        for kind, seed in insertions:
            out.append(inserted_copy(case, lungs, kind, seed, crop_px))
    logger.info("%d real training volumes from %s", len(out), list(names))
    return out


def as_prepared(r: RealPrepared, seed: int) -> PreparedVolume:
    """A :class:`RealPrepared` as a training volume; ``kind`` carries the study/copy name."""
    finding = r.lesion.reshape(r.lesion.shape[0], -1).sum(axis=1).astype(np.int32)
    finding += (r.slice_label == MUST_FIRE).astype(np.int32)  # windows find labelled slices
    return PreparedVolume(image=r.image, mask=r.mask, label=r.label, kind=f"real:{r.name}",
                          seed=seed, finding_per_slice=finding, lesion=r.lesion,
                          slice_label=r.slice_label)


def variant_names(name: str, insertions: Sequence[tuple[str, int]] = INSERTIONS) -> list[str]:
    return [name] + [f"{name}+{kind}{seed}" for kind, seed in insertions]


def real_prepared_file(work_dir: Path, variant: str) -> Path:
    return work_dir / "decovnet" / "real" / f"input_{variant}.npz"


def prepare_real_split(
    work_dir: Path, names: Sequence[str], crop_px: tuple[int, int],
    root: Path = COVID_CT_MD_DIR,
) -> list[Path]:
    """Cached training inputs of the named real studies (built on first use); only the named
    studies are ever read."""
    all_names = real_case_names(root)
    missing = [n for n in names
               if not all(real_prepared_file(work_dir, v).exists() for v in variant_names(n))]
    for r in build_real_cases(work_dir, missing, crop_px, root=root):
        seed = REAL_SEED_BASE + 100 * all_names.index(r.name.split("+")[0])
        seed += variant_names(r.name.split("+")[0]).index(r.name)
        save_prepared(as_prepared(r, seed), real_prepared_file(work_dir, r.name))
    return [real_prepared_file(work_dir, v) for n in names for v in variant_names(n)]
