"""The one place where the order of the pipeline stages is written down.

``PipelineRunner.run``: lungs -> classification -> lesions -> statistics, each timed.
``write_results``: SEG (lungs and lesions) -> SR (TID 1500, referencing the SEG) -> viewer SR
(lesion outlines for OHIF, only when there are lesions; kind "SR" too) -> hand-off of these
(the node queues their export) -> overlay (a slot for a writer of viewer-independent overlay
images), so the structured results never wait for the overlay. Every UID of the written objects
is derived from the job's ``uid_root``, so writing again gives identical objects.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import highdicom as hd

from dicomnode.contracts import PriorReport, ResultFile, ResultKind
from pipeline.stages import Classifier, LesionLocalizer, LungSegmenter
from pipeline.stats import lung_stats
from pipeline.types import Classification, CTVolume, Lesion, ModelInfo, StudyResult
from pipeline.writers.seg import build_seg, plan_segments
from pipeline.writers.sr import build_sr
from pipeline.writers.viewer_sr import build_viewer_sr

logger = logging.getLogger(__name__)

SEG_FILE_NAME = "seg.dcm"
SR_FILE_NAME = "sr.dcm"
VIEWER_SR_FILE_NAME = "sr-viewer.dcm"


class OverlayWriter(Protocol):
    """Writes overlay images (e.g. secondary captures with burned-in contours) of a result."""

    def write(
        self, result: StudyResult, out_dir: Path, uid_root: str
    ) -> Sequence[ResultFile]: ...


# Called with the written SEG and SR files before the overlay is rendered (see write_results).
Handoff = Callable[[Sequence[ResultFile]], None]


class PipelineRunner:
    """Runs the configured stages on a volume and writes the result objects."""

    def __init__(
        self,
        lungs: LungSegmenter,
        classifier: Classifier | None = None,
        localizer: LesionLocalizer | None = None,
        overlay: OverlayWriter | None = None,
    ) -> None:
        self._lungs = lungs
        self._classifier = classifier
        self._localizer = localizer
        self._overlay = overlay

    @property
    def algorithms(self) -> tuple[ModelInfo, ...]:
        """Identities of the configured stages, in stage order."""
        stages = (self._lungs, self._classifier, self._localizer)
        return tuple(stage.info for stage in stages if stage is not None)

    def run(self, volume: CTVolume) -> StudyResult:
        """Run every configured stage on ``volume``; timings are in ``timings_s``."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        lungs = self._lungs.segment(volume)
        timings["lungs"] = time.perf_counter() - started

        classification: Classification | None = None
        if self._classifier is not None:
            started = time.perf_counter()
            classification = self._classifier.classify(volume, lungs)
            timings["classify"] = time.perf_counter() - started

        lesions: tuple[Lesion, ...] | None = None
        if self._localizer is not None:
            started = time.perf_counter()
            lesions = tuple(self._localizer.localize(volume, lungs, classification))
            timings["localize"] = time.perf_counter() - started

        started = time.perf_counter()
        stats = lung_stats(volume, lungs, lesions)
        timings["stats"] = time.perf_counter() - started
        logger.info(
            "pipeline on series %s: %s", volume.series_instance_uid,
            ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()),
        )
        return StudyResult(
            volume=volume,
            lungs=lungs,
            lung_stats=stats,
            classification=classification,
            lesions=lesions or (),
            timings_s=timings,
            algorithms=self.algorithms,
        )

    def write_results(
        self,
        result: StudyResult,
        out_dir: Path,
        uid_root: str,
        predecessors: Sequence[PriorReport] = (),
        handoff: Handoff | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[ResultFile]:
        """Write SEG, SR and (when configured) overlay objects of ``result`` into ``out_dir``;
        ``handoff`` gets the SEG and SR before the overlay is rendered."""
        return write_results(result, out_dir, uid_root, predecessors, overlay=self._overlay,
                             handoff=handoff, timings=timings)


def write_results(
    result: StudyResult,
    out_dir: Path,
    uid_root: str,
    predecessors: Sequence[PriorReport] = (),
    overlay: OverlayWriter | None = None,
    handoff: Handoff | None = None,
    timings: dict[str, float] | None = None,
) -> list[ResultFile]:
    """Write the result objects of ``result``; see the module docstring for the order.

    The SEG and SR(s) are complete files when ``handoff`` is called with them (once, also
    when there are none), and the overlay is rendered only after it returns: a node that
    queues their export there sends them while the overlay is drawn. ``timings`` (when
    given) gets the seconds of "write" (SEG and SRs), "handoff" and "overlay".
    """
    timings = {} if timings is None else timings
    started = time.perf_counter()
    written = write_structured(result, out_dir, uid_root, predecessors)
    timings["write"] = time.perf_counter() - started
    if handoff is not None:
        started = time.perf_counter()
        handoff(tuple(written))
        timings["handoff"] = time.perf_counter() - started
        logger.info("handed off %d structured result(s) in %.2f s", len(written),
                    timings["handoff"])
    if overlay is not None:
        started = time.perf_counter()
        images = overlay.write(result, out_dir, uid_root)
        written.extend(images)
        timings["overlay"] = time.perf_counter() - started
        logger.info("wrote %d overlay image(s) in %.2f s", len(images), timings["overlay"])
    return written


def write_structured(
    result: StudyResult,
    out_dir: Path,
    uid_root: str,
    predecessors: Sequence[PriorReport] = (),
) -> list[ResultFile]:
    """Write the SEG, the SR and the viewer SR of ``result``.

    A SEG is written when some lung or lesion mask is non-empty, an SR when there is a
    segment or a classification to report, the viewer SR when the SEG has a lesion segment;
    the log says when one is left out.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[ResultFile] = []
    seg: hd.seg.Segmentation | None = None
    plans = plan_segments(result, uid_root)
    if plans:
        started = time.perf_counter()
        seg, plans = build_seg(result, uid_root, plans)
        path = out_dir / SEG_FILE_NAME
        _save(path, seg)
        written.append(_written(path, ResultKind.SEG, seg))
        logger.info("wrote SEG in %.2f s", time.perf_counter() - started)
    else:
        logger.warning(
            "no lung or lesion mask: no SEG written for %s", result.volume.series_instance_uid
        )
    if seg is not None or result.classification is not None:
        started = time.perf_counter()
        sr = build_sr(result, seg, plans, uid_root, predecessors)
        path = out_dir / SR_FILE_NAME
        _save(path, sr)
        written.append(_written(path, ResultKind.SR, sr))
        logger.info("wrote SR in %.2f s", time.perf_counter() - started)
    else:
        logger.warning("nothing to report: no SR written for %s", result.volume.series_instance_uid)
    if seg is not None:
        started = time.perf_counter()
        viewer_sr = build_viewer_sr(result, plans, uid_root, predecessors)
        if viewer_sr is not None:
            path = out_dir / VIEWER_SR_FILE_NAME
            _save(path, viewer_sr)
            written.append(_written(path, ResultKind.SR, viewer_sr))
            logger.info("wrote viewer SR in %.2f s", time.perf_counter() - started)
    return written


def _save(path: Path, dataset: hd.SOPClass) -> None:
    """Write through a temporary file and rename: a re-run that rewrites a file the exporter
    is sending (it was handed off before) never exposes a half-written file."""
    partial = path.with_name(path.name + ".partial")
    dataset.save_as(partial)
    os.replace(partial, path)


def _written(path: Path, kind: ResultKind, dataset: hd.SOPClass) -> ResultFile:
    return ResultFile(
        path=path,
        kind=kind,
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
    )
