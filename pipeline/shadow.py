"""Classifiers named ``NAME@VERSION`` of the model registry: the shadow classifier that runs
beside the primary on every job (``[pipeline] shadow_classifier``), and a promoted primary.

A shadow's answer goes into the job's summary under ``"shadow"`` and nowhere else: no result
object, no export. A shadow that fails leaves an error in that block; the job goes on.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from pipeline.errors import ModelError
from pipeline.stages import Classifier
from pipeline.types import CTVolume, LungMask

logger = logging.getLogger(__name__)


def parse_model_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.strip().partition("@")
    if not sep or not name or not version:
        raise ModelError(f"model {ref!r}: write NAME@VERSION (a model registry entry)")
    return name, version


def build_registry_classifier(ref: str, device: str, *, compute_cam: bool) -> Classifier:
    """The classifier of registry entry ``NAME@VERSION``; ModelError when the registry holds
    another version or an architecture that is not a classifier."""
    from pipeline.models.registry import get_spec
    from pipeline.stages.classify import CnnBertClassifier, DeCoVNetClassifier

    name, version = parse_model_ref(ref)
    spec = get_spec(name)
    if spec.version != version:
        raise ModelError(f"model {name!r} is registered at version {spec.version!r}, "
                         f"not {version!r}")
    if spec.architecture == "decovnet":
        return DeCoVNetClassifier(device=device, model_name=name, compute_cam=compute_cam)
    if spec.architecture == "cnn-bert":
        return CnnBertClassifier(device=device, backbone=name)
    raise ModelError(f"model {name!r} is a {spec.architecture}, not a classifier")


def build_shadow(ref: str, primary_ref: str, device: str) -> Classifier | None:
    """The shadow classifier when one is configured and it is not the primary itself."""
    if not ref or ref == primary_ref:
        return None
    logger.info("shadow classifier %s runs beside the primary (never exported)", ref)
    return build_registry_classifier(ref, device, compute_cam=False)


def _rounded(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def shadow_answer(classifier: Classifier, volume: CTVolume, lungs: LungMask) -> dict[str, Any]:
    """The summary block of one shadow run (errors included, never raised)."""
    started = time.perf_counter()
    info = classifier.info
    model = {"name": info.name, "version": info.version, "sha256": info.sha256}
    try:
        result = classifier.classify(volume, lungs)
    except Exception as exc:  # noqa: BLE001 - a shadow never fails the job
        logger.warning("shadow classifier %s@%s failed: %s", info.name, info.version, exc)
        return {"model": model, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {
        "model": model,
        "label": result.label,
        "p_covid": _rounded(result.p_covid),
        "probabilities": {k: _rounded(v) for k, v in result.probabilities.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
