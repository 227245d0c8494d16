"""On-disk cache of generated phantom cases, so that epochs and evaluations never regenerate them.

Layout: ``<root>/cases/<split>/case_<seed>.npz`` holding the HU volume (int16), a lung label
volume (0 background, 1 right, 2 left), the lesion mask and the metadata. Generation is resumable:
existing files are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.synthetic import CASE_KINDS, PhantomCase, generate_case

logger = logging.getLogger(__name__)

DEFAULT_WORK_DIR = Path(__file__).resolve().parents[1] / ".work"
# Kinds cycle in this order over consecutive seeds: half COVID, half the look-alikes.
KIND_CYCLE = ("covid", "cap", "covid", "normal", "covid", "mass", "covid", "cap", "covid", "normal")
SPLIT_SEED_BASE = {"train": 10_000, "val": 500_000, "test": 900_000}
RIGHT_LUNG_LABEL = 1
LEFT_LUNG_LABEL = 2


def split_seeds(split: str, count: int) -> list[int]:
    """Seeds of a split; the ranges never overlap, so held-out cases are never trained on."""
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_SEED_BASE)}")
    base = SPLIT_SEED_BASE[split]
    return [base + i for i in range(count)]


def kind_for_seed(seed: int) -> str:
    """The phantom kind assigned to a seed (cycles through KIND_CYCLE)."""
    return KIND_CYCLE[seed % len(KIND_CYCLE)]


def case_file(root: Path, split: str, seed: int) -> Path:
    return root / "cases" / split / f"case_{seed}.npz"


def save_case(case: PhantomCase, path: Path) -> None:
    """Write a case (int16 HU, uint8 lung labels, packed lesion mask), uncompressed for speed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.zeros(case.hu.shape, dtype=np.uint8)
    labels[case.lung_right] = RIGHT_LUNG_LABEL
    labels[case.lung_left] = LEFT_LUNG_LABEL
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        hu=np.clip(np.rint(case.hu), -32768, 32767).astype(np.int16),
        lungs=labels,
        lesion=np.packbits(case.lesion_mask),
        spacing=np.asarray(case.spacing_mm, dtype=np.float64),
        kind=np.asarray(case.kind),
        label=np.asarray(case.label),
        seed=np.asarray(case.seed),
        lesion_kinds=np.asarray(",".join(case.lesion_kinds)),
        version=np.asarray(case.version),
    )
    tmp.replace(path)


def load_case(path: Path) -> PhantomCase:
    """Read a case written by :func:`save_case`."""
    with np.load(path) as data:
        hu = data["hu"].astype(np.float32)
        labels = data["lungs"]
        lesion = np.unpackbits(data["lesion"], count=hu.size).reshape(hu.shape).astype(bool)
        kinds = str(data["lesion_kinds"])
        spacing = tuple(float(v) for v in data["spacing"])
        return PhantomCase(
            hu=hu,
            spacing_mm=(spacing[0], spacing[1], spacing[2]),
            lung_left=labels == LEFT_LUNG_LABEL,
            lung_right=labels == RIGHT_LUNG_LABEL,
            lesion_mask=lesion,
            kind=str(data["kind"]),
            label=str(data["label"]),
            seed=int(data["seed"]),
            lesion_kinds=tuple(k for k in kinds.split(",") if k),
            version=int(data["version"]) if "version" in data.files else 1,
        )


def cached_version(path: Path) -> int | None:
    """The generator version of a cached case (1 for files written before versions), or None."""
    if not path.exists():
        return None
    with np.load(path) as data:
        return int(data["version"]) if "version" in data.files else 1


def make_cases(
    root: Path,
    split: str,
    count: int,
    matrix: int = 256,
    slice_spacing_mm: float | tuple[float, float] | None = None,
    kinds: Sequence[str] | None = None,
    version: int = 1,
) -> list[Path]:
    """Generate (or keep) ``count`` cases of ``split`` under ``root``; returns their paths.
    A cached case of another generator ``version`` is generated again."""
    allowed = set(CASE_KINDS if kinds is None else kinds)
    paths: list[Path] = []
    seeds = [s for s in split_seeds(split, count * 3) if kind_for_seed(s) in allowed][:count]
    for seed in tqdm(seeds, desc=f"phantoms {split}", unit="case"):
        path = case_file(root, split, seed)
        if cached_version(path) != version:
            case = generate_case(seed, kind=kind_for_seed(seed), matrix=matrix,
                                 slice_spacing_mm=slice_spacing_mm, version=version)
            save_case(case, path)
        paths.append(path)
    logger.info("%d %s phantom cases ready under %s", len(paths), split, root)
    return paths
