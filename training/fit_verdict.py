"""Fit the verdict policy of the registered DeCoVNet: temperature, band, validated domain.

``python -m training fit-verdict --cases 16`` runs the production stages (U-Net lungs,
DeCoVNet) on held-back phantoms of the ``val`` split (never trained on) and, when the model
card says no real study was trained on, on the real COVID-CT-MD studies too; it fits

- the temperature on all those cases (phantoms and real studies: held-back for this model),
- the validated domain (image statistics and embedding) on the phantoms only: they are the
  only cases on which the model's performance was measured and found adequate,

and writes both, with where they were fitted, into the model's registry metadata
(``calibration``, ``decision``, ``domain``), bumping the version's patch number. The per-case
table goes to ``<work>/verdict_fit.json``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.registry import ModelSpec, get_spec, register_model
from pipeline.series import volume_from_array
from pipeline.stages.classify import DeCoVNetClassifier
from pipeline.stages.lung_unet import UNetLungSegmenter
from pipeline.stages.verdict import (
    DEFAULT_NEGATIVE_BELOW,
    DEFAULT_POSITIVE_FROM,
    fit_domain,
    fit_temperature,
    image_statistics,
)
from pipeline.types import CTVolume
from training.cache import load_case, make_cases

logger = logging.getLogger(__name__)

P_CLIP = 1e-12  # a probability that rounds to 0 or 1 in float64 keeps a finite logit margin


def _row(name: str, source: str, label: bool, volume: CTVolume,
         segmenter: UNetLungSegmenter, classifier: DeCoVNetClassifier) -> dict[str, Any]:
    lungs = segmenter.segment(volume)
    result = classifier.classify(volume, lungs)
    raw = result.verdict.p_covid_raw if result.verdict else result.p_covid
    p = min(max(raw, P_CLIP), 1.0 - P_CLIP)
    return {
        "case": name, "source": source, "covid": label, "p_raw": raw,
        "margin": math.log(p) - math.log(1.0 - p),
        "stats": image_statistics(volume, lungs.both),
        "embedding": result.embedding.astype(float).tolist(),
    }


def collect(work_dir: Path, n_val: int, real: bool,
            registry_dir: Path | None) -> list[dict[str, Any]]:
    segmenter = UNetLungSegmenter(device="cpu", registry_dir=registry_dir)
    classifier = DeCoVNetClassifier(device="cpu", registry_dir=registry_dir, compute_cam=False)
    rows = []
    for path in make_cases(work_dir, "val", n_val):
        case = load_case(path)
        volume = volume_from_array(case.hu, case.spacing_mm, uid_root=f"phantom-{case.seed}")
        rows.append(_row(f"val-{case.seed}-{case.kind}", "phantom", case.is_covid, volume,
                         segmenter, classifier))
    if real:
        from training.real_data import load_real_cases

        for study in load_real_cases():
            rows.append(_row(study.name, "real", study.covid_positive, study.volume,
                             segmenter, classifier))
    return rows


def fit_policy(rows: list[dict[str, Any]], n_val: int) -> dict[str, Any]:
    """Registry metadata (calibration, decision, domain) from the collected rows."""
    margins = np.array([[0.0, r["margin"]] for r in rows])
    labels = np.array([r["covid"] for r in rows])
    temperature = fit_temperature(margins, labels)
    real = [r["case"] for r in rows if r["source"] == "real"]
    phantoms = [r for r in rows if r["source"] == "phantom"]
    calib_on = f"{n_val} held-back validation phantoms (val seeds 500000+)"
    if real:
        calib_on += " and the real studies " + ", ".join(real) + " (none trained on)"
    domain = fit_domain([r["stats"] for r in phantoms],
                        [np.asarray(r["embedding"]) for r in phantoms],
                        fitted_on=f"{len(phantoms)} validation phantoms (val seeds 500000+)")
    return {
        "calibration": {"method": "temperature scaling", "temperature": round(temperature, 4),
                        "fitted_on": calib_on, "cases": len(rows)},
        "decision": {"negative_below": DEFAULT_NEGATIVE_BELOW,
                     "positive_from": DEFAULT_POSITIVE_FROM},
        "domain": domain.to_json(),
    }


def bump_patch(version: str) -> str:
    head, _, tail = version.partition("-")
    parts = head.split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts) + (f"-{tail}" if tail else "")


def store(spec: ModelSpec, policy: dict[str, Any], registry_dir: Path | None) -> ModelSpec:
    metadata = {**dict(spec.metadata), **policy}
    return register_model(
        spec.name, spec.architecture, spec.weights_file, version=bump_patch(spec.version),
        class_names=spec.class_names, positive_class=spec.positive_class,
        arch_kwargs=spec.arch_kwargs, input_spec=spec.input_spec, card=spec.card,
        metadata=metadata, registry_dir=registry_dir,
    )


def run(work_dir: Path, n_val: int, real: bool, registry_dir: Path | None,
        write: bool = True) -> dict[str, Any]:
    rows = collect(work_dir, n_val, real, registry_dir)
    policy = fit_policy(rows, n_val)
    (work_dir / "verdict_fit.json").write_text(json.dumps({"rows": rows, "policy": policy},
                                                          indent=1))
    if write:
        spec = store(get_spec("decovnet", registry_dir), policy, registry_dir)
        logger.info("decovnet %s: temperature %.3f, domain limit %.2f", spec.version,
                    policy["calibration"]["temperature"], policy["domain"]["limit"])
    return policy
