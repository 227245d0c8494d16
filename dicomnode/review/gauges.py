"""The local validation figures as Prometheus gauges (metric families for the /metrics
collector), one sample per (role, model) over all verdicts; undefined ratios are left out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
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


def validation_families(models: list[Mapping[str, Any]]) -> list[GaugeMetricFamily]:
    """One gauge family per figure defined for at least one (role, model)."""
    families = []
    for key, name, help_text in GAUGES:
        samples = [(m, float(m[key])) for m in models if m.get(key) is not None]
        if not samples:
            continue
        family = GaugeMetricFamily(name, help_text, labels=["role", "model"])
        for model, value in samples:
            family.add_metric([str(model["role"]), str(model["model"])], value)
        families.append(family)
    return families


def validation_metrics(session: Session) -> list[GaugeMetricFamily]:
    """The gauges for one scrape."""
    return validation_families(validation_report(session)["models"])
