"""Access to the two real COVID-CT-MD studies in ``shared/data`` and their slice-level labels."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.series import read_series
from pipeline.types import CTVolume

logger = logging.getLogger(__name__)

COVID_CT_MD_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "covid-ct-md"


@dataclass(frozen=True)
class RealCase:
    """A real study with its labels.

    ``infection_slices`` use the dataset's convention (0 = most cranial); use
    :meth:`infected_volume_slices` for indices into ``volume.hu``.
    """

    name: str
    diagnosis: str
    covid_positive: bool
    volume: CTVolume
    infection_slices: tuple[int, ...]

    def infected_volume_slices(self) -> set[int]:
        """Infection-labelled slices as z indices of ``volume.hu`` (ascending position)."""
        n = self.volume.shape[0]
        cranial_first = self.volume.direction[2, 2] > 0  # z index grows towards the head
        if cranial_first:
            return {n - 1 - i for i in self.infection_slices}
        return set(self.infection_slices)


def real_case_names(root: Path = COVID_CT_MD_DIR) -> list[str]:
    """The study names listed in ``labels/cases.json`` (no image is read)."""
    labels = json.loads((root / "labels" / "cases.json").read_text())
    return [str(entry["case"]) for entry in labels["cases"]]


def load_real_cases(
    root: Path = COVID_CT_MD_DIR, names: Collection[str] | None = None,
) -> list[RealCase]:
    """Read the cases listed in ``labels/cases.json`` (UIDs repaired: the export lacks them);
    with ``names``, only those: the others' files are never opened."""
    labels = json.loads((root / "labels" / "cases.json").read_text())
    cases = []
    for entry in labels["cases"]:
        if names is not None and str(entry["case"]) not in names:
            continue
        folder = root / entry["path"]
        volume = read_series(sorted(p for p in folder.iterdir() if p.is_file()),
                             repair_uids=True)
        cases.append(RealCase(
            name=str(entry["case"]),
            diagnosis=str(entry["diagnosis"]),
            covid_positive=bool(entry["covid_positive"]),
            volume=volume,
            infection_slices=tuple(int(i) for i in entry["infection_slices"]),
        ))
    logger.info("loaded %d real cases from %s", len(cases), root)
    return cases


def slice_fraction_in(pred_mask: np.ndarray, slices: set[int]) -> float:
    """Share of the predicted voxels lying on the given z slices (NaN for an empty mask)."""
    per_slice = pred_mask.reshape(pred_mask.shape[0], -1).sum(axis=1)
    total = float(per_slice.sum())
    if total == 0:
        return float("nan")
    return float(sum(per_slice[z] for z in slices if 0 <= z < per_slice.size)) / total
