"""The chest-CT processor the node's worker loads (``pipeline.processor:ChestCTProcessor``).

It satisfies ``dicomnode.jobs.processing.Processor`` structurally (of the node, this package
imports only ``dicomnode.contracts``): built once per worker process from the ``[pipeline]``
settings, it loads its stages (and their models) once, then turns each request's series into
SEG and SR files and a JSON-serialisable summary. ``analyze_files`` runs the same analysis on
a folder of files with no node at all (the ``dicomnode analyze`` command).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom.config

from dicomnode.contracts import PriorReport, ProcessOutcome, ProcessRequest, ResultFile
from pipeline import __version__
from pipeline.errors import ModelError, PipelineError
from pipeline.resample import use_one_blas_thread
from pipeline.runner import Handoff, OverlayWriter, PipelineRunner
from pipeline.series import read_series
from pipeline.shadow import build_registry_classifier, build_shadow, shadow_answer
from pipeline.stages import Classifier, LesionLocalizer, LungSegmenter
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from pipeline.types import Classification, CTVolume, ModelInfo, StudyResult
from pipeline.writers.uids import derive_uid

logger = logging.getLogger(__name__)

CLASSIFIERS = ("decovnet", "cnn-bert", "none")
LUNG_SEGMENTERS = ("unet", "morphological")
SUMMARY_FILE_NAME = "summary.json"
# Root of the UIDs written by ``analyze_files`` when no uid_root is given: derived from the
# series so that analysing the same files twice writes the same objects.
ANALYZE_UID_ROOT = "urn:chest-ct-dicomnode:analyze"
DEFAULT_SETTINGS: Mapping[str, Any] = {
    "classifier": "decovnet",
    "lung_segmentation": "unet",
    "localize_lesions": True,
    "device": "auto",
    "threads": 0,
    "overlay": True,
    "shadow_classifier": "",
    "primary_classifier": "",
}


@dataclass(frozen=True)
class ProcessorConfig:
    """The ``[pipeline]`` settings this processor uses, checked once."""

    classifier: str = "decovnet"
    lung_segmentation: str = "unet"
    localize_lesions: bool = True
    device: str = "auto"
    threads: int = 0
    overlay: bool = True
    # Registry models "NAME@VERSION" (pipeline.shadow): a shadow run beside the primary, and a
    # promoted primary that replaces ``classifier`` (the node passes the promotion it recorded).
    shadow_classifier: str = ""
    primary_classifier: str = ""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ProcessorConfig:
        known = {key: value for key, value in settings.items() if key in DEFAULT_SETTINGS}
        merged = {**DEFAULT_SETTINGS, **known}
        config = cls(
            classifier=str(merged["classifier"]).strip().lower(),
            lung_segmentation=str(merged["lung_segmentation"]).strip().lower(),
            localize_lesions=_as_bool("localize_lesions", merged["localize_lesions"]),
            device=str(merged["device"]),
            threads=int(merged["threads"]),
            overlay=_as_bool("overlay", merged["overlay"]),
            shadow_classifier=str(merged["shadow_classifier"] or "").strip(),
            primary_classifier=str(merged["primary_classifier"] or "").strip(),
        )
        if config.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {config.classifier!r}")
        if config.lung_segmentation not in LUNG_SEGMENTERS:
            raise ValueError(
                f"lung_segmentation must be one of {LUNG_SEGMENTERS}, "
                f"got {config.lung_segmentation!r}"
            )
        if config.threads < 0:
            raise ValueError(f"threads must be >= 0, got {config.threads}")
        return config


def _as_bool(name: str, value: Any) -> bool:
    """A boolean setting; strings such as "false" or "0" are read as words, not truthiness."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int):
        return value != 0
    raise ValueError(f"{name} must be a boolean, got {value!r}")


@contextmanager
def _quiet_uid_validation() -> Iterator[None]:
    """Silence pydicom's per-access warnings about malformed values while defective files are
    read for repair (``repair_uids`` logs one summary instead). Only for the offline tool:
    it changes a process-wide pydicom setting for the duration."""
    saved = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        pydicom.config.settings.reading_validation_mode = saved


def _import_stage(module: str, name: str) -> Any:
    """Import a model-based stage class on demand, so weight-free set-ups never load torch."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"stage {module}:{name} is not available: {exc}") from exc


def _set_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 keeps the library default)."""
    if threads <= 0:
        return
    torch = importlib.import_module("torch")
    torch.set_num_threads(threads)
    logger.info("torch intra-op threads set to %d", threads)


def build_lung_segmenter(name: str, device: str) -> LungSegmenter:
    """The configured lung segmenter: "morphological" (no weights) or "unet"."""
    if name == "morphological":
        return MorphologicalLungSegmenter()
    if name == "unet":
        segmenter: LungSegmenter = _import_stage("pipeline.stages.lung_unet", "UNetLungSegmenter")(
            device=device
        )
        return segmenter
    raise ValueError(f"unknown lung segmentation {name!r}; expected one of {LUNG_SEGMENTERS}")


def build_classifier(name: str, device: str) -> Classifier | None:
    """The configured classifier: "decovnet", "cnn-bert" or None for "none"."""
    if name == "none":
        return None
    if name == "decovnet":
        classifier: Classifier = _import_stage("pipeline.stages.classify", "DeCoVNetClassifier")(
            device=device
        )
        return classifier
    if name == "cnn-bert":
        classifier = _import_stage("pipeline.stages.classify", "CnnBertClassifier")(device=device)
        return classifier
    raise ValueError(f"unknown classifier {name!r}; expected one of {CLASSIFIERS}")


def build_localizer(enabled: bool) -> LesionLocalizer | None:
    """The CAM lesion localizer when enabled."""
    if not enabled:
        return None
    localizer: LesionLocalizer = _import_stage("pipeline.stages.localize", "CamLesionLocalizer")()
    return localizer


def build_overlay(enabled: bool) -> OverlayWriter | None:
    """The burned-in overlay writer (Secondary Capture series) when enabled."""
    if not enabled:
        return None
    try:
        module = importlib.import_module("pipeline.writers.overlay")
        overlay: OverlayWriter = module.SecondaryCaptureOverlay()
    except (ImportError, AttributeError) as exc:
        raise PipelineError(f"overlay writer is not available: {exc}") from exc
    return overlay


def build_runner(config: ProcessorConfig) -> PipelineRunner:
    """Build every configured stage once (models load here)."""
    use_one_blas_thread()
    if config.lung_segmentation == "unet" or config.classifier != "none" or (
        config.primary_classifier
    ):
        _set_threads(config.threads)
    lungs = build_lung_segmenter(config.lung_segmentation, config.device)
    classifier = (
        build_registry_classifier(config.primary_classifier, config.device, compute_cam=True)
        if config.primary_classifier
        else build_classifier(config.classifier, config.device)
    )
    localize = config.localize_lesions
    if localize and classifier is None:
        logger.info("no classifier: lesions come from the localizer's intensity-based fallback")
    overlay = build_overlay(config.overlay)
    return PipelineRunner(lungs, classifier, build_localizer(localize), overlay)


class ChestCTProcessor:
    """Lungs, classification and lesions of one CT series, returned as SEG + TID 1500 SR."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self._config = ProcessorConfig.from_settings(settings)
        started = time.perf_counter()
        self._runner = build_runner(self._config)
        self._shadow = build_shadow(self._config.shadow_classifier,
                                    self._config.primary_classifier, self._config.device)
        logger.info(
            "chest-CT processor ready in %.1f s: lungs %s, classifier %s, lesions %s, overlay %s",
            time.perf_counter() - started, self._config.lung_segmentation,
            self._config.classifier, self._config.localize_lesions, self._config.overlay,
        )

    @property
    def algorithms(self) -> tuple[ModelInfo, ...]:
        return self._runner.algorithms

    def process(self, request: ProcessRequest) -> ProcessOutcome:
        """Analyse the request's series and write its result objects into ``out_dir``."""
        started = time.perf_counter()
        # The offline `dicomnode analyze` asks for UID repair; the node only sends valid files.
        repair = bool(request.options.get("repair_uids", False))
        if repair:  # the repair logs one warning per series, not one per malformed value
            with _quiet_uid_validation():
                volume = read_series(request.files, repair_uids=True)
        else:
            volume = read_series(request.files)
        read_s = time.perf_counter() - started
        logger.info("job %s: series %s read", request.job_id, volume.series_instance_uid)
        return self.analyze_volume(
            volume, Path(request.out_dir), request.uid_root, request.predecessors, read_s,
            handoff=request.handoff,
        )

    def analyze_volume(
        self,
        volume: CTVolume,
        out_dir: Path,
        uid_root: str,
        predecessors: Sequence[PriorReport] = (),
        read_s: float | None = None,
        handoff: Handoff | None = None,
    ) -> ProcessOutcome:
        """Run the stages on ``volume``, write SEG and SR, hand them off, write the overlay,
        and summarise (``handed_off_after_s``: seconds until the SEG and SRs were handed off)."""
        result = self._runner.run(volume)
        timings = {"read": read_s} if read_s is not None else {}
        timings.update(result.timings_s)
        written = self._runner.write_results(result, out_dir, uid_root, predecessors,
                                             handoff=handoff, timings=timings)
        handed_off_after_s = sum(v for k, v in timings.items() if k != "overlay")
        # The shadow classifier: its answer is summarised, never written or exported.
        shadow = shadow_answer(self._shadow, volume, result.lungs) if self._shadow else None
        if shadow is not None:
            timings["shadow"] = float(shadow.get("seconds", 0.0))
        timings["total"] = sum(timings.values())
        objects = tuple(written)
        summary = summarize(result, objects, timings)
        summary["handed_off_after_s"] = _number(handed_off_after_s, 3)
        if shadow is not None:
            summary["shadow"] = shadow
        return ProcessOutcome(objects=objects, summary=summary)


def _number(value: float | None, digits: int = 3) -> float | None:
    """Round for JSON; NaN and infinity (e.g. the mean HU of an empty mask) become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _model(model: ModelInfo) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "sha256": model.sha256}


def summarize(
    result: StudyResult, objects: Sequence[ResultFile], timings: Mapping[str, float]
) -> dict[str, Any]:
    """JSON-serialisable summary of a result (no patient-identifying attributes)."""
    volume = result.volume
    lungs = {
        stats.side: {
            "volume_ml": _number(stats.volume_ml, 1),
            "mean_hu": _number(stats.mean_hu, 1),
            "lesion_burden_percent": _number(stats.lesion_burden_percent, 2),
        }
        for stats in result.lung_stats
    }
    classification = None
    if result.classification is not None:
        c = result.classification
        classification = {
            "label": c.label,
            "p_covid": _number(c.p_covid, 4),
            "probabilities": {k: _number(v, 4) for k, v in c.probabilities.items()},
            "model": _model(c.model),
        }
    return {
        "verdict": verdict_summary(result.classification),
        "software": f"chest-ct-dicomnode {__version__}",
        "study_instance_uid": volume.study_instance_uid,
        "series_instance_uid": volume.series_instance_uid,
        "slices": volume.shape[0],
        "shape_zyx": list(volume.shape),
        "spacing_mm_zyx": [round(v, 4) for v in volume.spacing_mm],
        "lungs": lungs,
        "total_lung_volume_ml": _number(sum(s.volume_ml for s in result.lung_stats), 1),
        "lung_segmentation": result.lungs.method,
        "classification": classification,
        "lesions": [
            {
                "number": lesion.number,
                "volume_ml": _number(lesion.volume_ml, 2),
                "centroid_lps_mm": [_number(v, 1) for v in lesion.centroid_lps],
                "side": lesion.side,
                "mean_hu": _number(lesion.mean_hu, 1),
                "peak_activation": _number(lesion.peak_activation, 3),
                "largest_slice": lesion.largest_slice,
                "method": lesion.method,
            }
            for lesion in result.lesions
        ],
        "timings_s": {k: _number(v, 3) for k, v in timings.items()},
        "algorithms": [_model(m) for m in result.algorithms],
        "objects": [
            {
                "kind": obj.kind,
                "file": obj.path.name,
                "sop_class_uid": obj.sop_class_uid,
                "sop_instance_uid": obj.sop_instance_uid,
                "series_instance_uid": obj.series_instance_uid,
            }
            for obj in objects
        ],
    }


def verdict_summary(classification: Classification | None) -> dict[str, Any]:
    """The ``verdict`` block of summary.json (calibration, band, validated domain)."""
    if classification is None:
        return {"call": "not run", "statement": "classification not run"}
    v = classification.verdict
    if v is None:
        return {"call": "not assessed", "in_validated_domain": False,
                "statement": "uncalibrated classifier, validated domain not checked"}
    return {
        "call": v.call,
        "statement": v.statement,
        "p_covid_calibrated": _number(v.p_covid_calibrated, 4),
        "p_covid_raw": _number(v.p_covid_raw, 4),
        "in_validated_domain": v.in_validated_domain,
        "domain_distance": _number(v.domain_distance, 2),
        "embedding_distance": _number(v.embedding_distance, 2),
        "domain_limit": _number(v.domain_limit, 2),
        "negative_below": v.negative_below,
        "positive_from": v.positive_from,
        "temperature": v.temperature,
        "calibration_fitted_on": v.calibration_fitted_on,
        "domain_fitted_on": v.domain_fitted_on,
    }


def analyze_files(
    files: Iterable[Path | str],
    out_dir: Path,
    settings: Mapping[str, Any],
    uid_root: str | None = None,
) -> ProcessOutcome:
    """Offline analysis of a folder's files: SEG, SR and ``summary.json`` into ``out_dir``.

    Missing or malformed UIDs in the input are repaired deterministically (with a warning),
    so defective exports still give valid result objects. Without ``uid_root`` the result
    UIDs are derived from the series, so a second run writes identical objects.
    """
    processor = ChestCTProcessor(settings)
    started = time.perf_counter()
    with _quiet_uid_validation():
        volume = read_series(list(files), repair_uids=True)
    read_s = time.perf_counter() - started
    root = uid_root or derive_uid(ANALYZE_UID_ROOT, volume.series_instance_uid, *(
        f"{m.name}@{m.version}" for m in processor.algorithms
    ))
    out_dir = Path(out_dir)
    outcome = processor.analyze_volume(volume, out_dir, root, (), read_s)
    summary_path = out_dir / SUMMARY_FILE_NAME
    summary_path.write_text(json.dumps(outcome.summary, indent=2, allow_nan=False) + "\n")
    logger.info("analysis written to %s", out_dir)
    return outcome
