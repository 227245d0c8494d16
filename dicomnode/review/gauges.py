"""The local validation figures as Prometheus gauges (text exposition lines), one sample per
(role, model) over all verdicts; undefined ratios are left out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from dicomnode.review.validation import validation_report

GAUGES = (
    ("verdicts", "dicomnode_validation_verdicts", "Reviewed jobs (latest verdict each)."),
    ("sensitivity", "dicomnode_validation_sensitivity",
     "Sensitivity of the classification against the verdicts."),
    ("specificity", "dicomnode_validation_specificity",
     "Specificity of the classification against the verdicts."),
    ("ppv", "dicomnode_validation_ppv",
     "Positive predictive value of the classification against the verdicts."),
    ("accepted_lesion_share", "dicomnode_validation_accepted_lesion_share",
     "Share of reviewed lesions the radiologists accepted (primary only)."),
    ("missed_findings", "dicomnode_validation_missed_findings",
     "Findings the radiologists reported as missed (primary only)."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(models: list[Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for key, name, help_text in GAUGES:
        samples = [(m, float(m[key])) for m in models if m.get(key) is not None]
        if not samples:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for model, value in samples:
            labels = f'role="{_label(model["role"])}",model="{_label(model["model"])}"'
            lines.append(f"{name}{{{labels}}} {value!r}")
    return "".join(line + "\n" for line in lines)


def validation_exposition(session: Session) -> str:
    """The gauges for one scrape."""
    return exposition(validation_report(session)["models"])
