"""The real-study table: each COVID-CT-MD study through the production stages.

``python -m training.real_table [--out FILE.json]`` prints one markdown row per study:
p(COVID-19) raw and calibrated, the verdict, lesion volume, and where the lesions lie against
the slice-level infection labels (share of lesion slices on labelled slices, share of lesion
voxels on labelled slices). Works with any registry (``DICOMNODE_WEIGHTS_DIR``) and tolerates
older pipeline versions without a verdict, so a shipped model can be scored the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.stages.classify import DeCoVNetClassifier
from pipeline.stages.localize import CamLesionLocalizer
from pipeline.stages.lung_unet import UNetLungSegmenter
from pipeline.stages.verdict import band_call
from training.real_data import load_real_cases, slice_fraction_in


def score_cases(
    registry_dir: Path | None = None, names: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per real study (``names``: only those are read) with the models of
    ``registry_dir`` (default: the node's registry)."""
    segmenter = UNetLungSegmenter(device="cpu", registry_dir=registry_dir)
    classifier = DeCoVNetClassifier(device="cpu", registry_dir=registry_dir)
    localizer = CamLesionLocalizer()
    rows = []
    for case in load_real_cases(names=names):
        volume = case.volume
        lungs = segmenter.segment(volume)
        result = classifier.classify(volume, lungs)
        lesions = localizer.localize(volume, lungs, result)
        union = np.zeros(volume.shape, dtype=bool)
        for lesion in lesions:
            union |= lesion.mask
        infected = case.infected_volume_slices()
        lesion_slices = set(np.flatnonzero(union.any(axis=(1, 2))).tolist())
        verdict = getattr(result, "verdict", None)
        rows.append({
            "case": case.name, "diagnosis": case.diagnosis,
            "model": f"{result.model.name} {result.model.version}",
            "label": result.label,
            "p_raw": verdict.p_covid_raw if verdict else result.p_covid,
            "p_calibrated": verdict.p_covid_calibrated if verdict else None,
            "call": verdict.call if verdict else "(no verdict)",
            "band_call": band_call(verdict.p_covid_calibrated, verdict.negative_below,
                                   verdict.positive_from) if verdict else None,
            "in_domain": verdict.in_validated_domain if verdict else None,
            "domain_distance": verdict.domain_distance if verdict else None,
            "lesions": len(lesions),
            "lesion_ml": float(union.sum()) * volume.voxel_volume_ml,
            "lesion_slices": len(lesion_slices),
            "lesion_slice_share_on_labelled": (
                len(lesion_slices & infected) / len(lesion_slices) if lesion_slices else None),
            "lesion_voxel_share_on_labelled": slice_fraction_in(union, infected),
            "lung_left_ml": float(lungs.left.sum()) * volume.voxel_volume_ml,
            "lung_right_ml": float(lungs.right.sum()) * volume.voxel_volume_ml,
        })
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| case | diagnosis | model | p(COVID) raw | calibrated | verdict | lesions | "
            "lesion mL | lesion slices on labelled slices |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['diagnosis']} | {r['model']} | {_fmt(r['p_raw'])} | "
            f"{_fmt(r['p_calibrated'])} | {r['call']} | {r['lesions']} | "
            f"{_fmt(r['lesion_ml'], 1)} | {_fmt(r['lesion_slice_share_on_labelled'], 2)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = score_cases()
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
