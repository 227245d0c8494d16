"""A hospital's own confirmed cases as DeCoVNet training cases: ``dicomnode export-verdicts``.

The export (``training.verdict_export``) holds ``labels.csv`` (``path,label,mask,...``), one
de-identified DICOM series per case under ``images/`` and the accepted lesions' mask under
``masks/`` ((z, y, x) in the order ``pipeline.series.read_series`` gives). Each case becomes a
prepared volume for ``train-decovnet --real-root EXPORT --real-cases all``:

- a COVID-19 case: its accepted lesions are voxel targets of the COVID-class activation and
  their slices must fire; the other slices are free (a lesion the reader did not accept, or
  that the AI never proposed, may lie there);
- a non-COVID case: the activation stays at zero everywhere.

Lungs come from the production U-Net with the clean-up, as for the COVID-CT-MD studies. No
lesions are inserted into these cases (the clean lung of a reviewed COVID case is unknown).
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.series import read_series
from training.datasets.public import COVID_LABEL, normalise_label
from training.real_cases import MUST_FIRE, MUST_STAY_ZERO, RealPrepared, prepare_real
from training.real_data import RealCase

MAY_FIRE = -1  # slice_label of a reviewed COVID case's slices without an accepted lesion
LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = frozenset({"path", "label", "mask"})


def is_verdict_export(root: Path) -> bool:
    """Whether ``root`` looks like an ``export-verdicts`` folder (a labels.csv with masks)."""
    path = root / LABELS_FILE
    if not path.is_file():
        return False
    with path.open(newline="") as fh:
        header = next(csv.reader(fh), [])
    return REQUIRED_COLUMNS <= set(header)


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / LABELS_FILE).open(newline="") as fh:
        return list(csv.DictReader(fh))


def reviewed_case_names(root: Path) -> list[str]:
    """Case names (the image folder's name, e.g. ``case-0001``); no image is read."""
    return [Path(row["path"]).name for row in _rows(root)]


def cache_name(root: Path, name: str) -> str:
    return f"reviewed-{root.resolve().name}-{name}"


def slice_labels(mask: npt.NDArray[np.uint8], covid: bool) -> npt.NDArray[np.int8]:
    """MUST_FIRE on slices with an accepted lesion of a COVID case, MAY_FIRE on its other
    slices; MUST_STAY_ZERO on every slice of a non-COVID case."""
    if not covid:
        return np.full(mask.shape[0], MUST_STAY_ZERO, dtype=np.int8)
    has = mask.reshape(mask.shape[0], -1).any(axis=1)
    return np.where(has, MUST_FIRE, MAY_FIRE).astype(np.int8)


def build_reviewed_cases(
    root: Path, work_dir: Path, names: Collection[str], crop_px: tuple[int, int],
) -> list[RealPrepared]:
    """The prepared volumes of the named reviewed cases; the others are never read."""
    from training.real_cases import production_lungs

    out = []
    for row in _rows(root):
        name = Path(row["path"]).name
        if name not in names:
            continue
        folder = root / row["path"]
        volume = read_series(sorted(p for p in folder.iterdir() if p.is_file()),
                             repair_uids=True)
        mask = np.load(root / row["mask"]).astype(np.uint8)
        if mask.shape != volume.shape:
            raise ValueError(f"{name}: mask {mask.shape} does not match the series "
                             f"{volume.shape}")
        covid = normalise_label(row["label"]) == COVID_LABEL
        # the lungs' cache key names the export too: every export numbers its cases from 1
        lungs = production_lungs(RealCase(cache_name(root, name), row["label"], covid, volume,
                                          ()), work_dir)
        out.append(prepare_real(name, volume, lungs, slice_labels(mask, covid), int(covid),
                                crop_px, lesion=mask.astype(bool) if covid else None))
    return out


def prepare_reviewed_split(
    root: Path, work_dir: Path, names: Collection[str], crop_px: tuple[int, int],
) -> list[Path]:
    """Cached training inputs of the named reviewed cases (built on first use)."""
    from training.real_cases import REAL_SEED_BASE, as_prepared
    from training.train_decovnet import save_prepared

    def target(name: str) -> Path:
        return work_dir / "decovnet" / "reviewed" / f"input_{cache_name(root, name)}.npz"

    all_names = reviewed_case_names(root)
    missing = [n for n in names if not target(n).exists()]
    for r in build_reviewed_cases(root, work_dir, missing, crop_px):
        seed = REAL_SEED_BASE + 50_000 + all_names.index(r.name)
        save_prepared(as_prepared(r, seed), target(r.name))
    return [target(n) for n in all_names if n in names]
