"""Burned-in overlay series for viewers without SEG support (Secondary Capture, RGB).

Many PACS viewers cannot display a DICOM SEG, so the results are also drawn into ordinary
images: one Secondary Capture Image per CT slice that contains lung, showing the slice in the
lung window with the right and left lung contours, the lesion outlines with their numbers,
the classifier's activation map inside the lungs, a legend and the text "NOT FOR DIAGNOSTIC
USE"; then one summary image with the findings in words and numbers. Every image is
single-frame 8-bit RGB, uncompressed, in one new series of the source study, and references
the CT slice it was drawn from. UIDs derive from the job's ``uid_root``, so writing again
gives the same instances.

The slice images are numbered and written in the order a viewer shows the source series
(``pipeline.writers.slice_numbers``), so the overlay series scrolls like the CT and its
burned-in slice numbers are the viewer's.

Modules: ``overlay_draw`` draws a slice, ``overlay_summary`` the summary page, ``sc`` wraps an
image into a Secondary Capture dataset (highdicom ``SCImage``); this one chooses the slices
and writes the series.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from dicomnode.contracts import ResultFile, ResultKind
from pipeline.types import StudyResult
from pipeline.writers.equipment import SOFTWARE_VERSIONS, equipment_for, result_models
from pipeline.writers.overlay_draw import (
    HEAT_MIN_ACTIVATION,
    LESION_CONTOUR_PX,
    LESION_OUTLINE_RGB,
    NOT_FOR_DIAGNOSTIC_USE,
    WARNING_RGB,
    OverlayRenderer,
    model_text,
)
from pipeline.writers.overlay_summary import render_summary, thumbnail_slice
from pipeline.writers.sc import (
    SECONDARY_CAPTURE_IMAGE_STORAGE,
    ImageSpec,
    SeriesContext,
    sc_image,
)
from pipeline.writers.seg import LEFT_LUNG_RGB, RIGHT_LUNG_RGB
from pipeline.writers.uids import derive_uid

logger = logging.getLogger(__name__)

__all__ = [
    "HEAT_MIN_ACTIVATION", "LEFT_LUNG_RGB", "LESION_CONTOUR_PX", "LESION_OUTLINE_RGB",
    "NOT_FOR_DIAGNOSTIC_USE", "OVERLAY_KIND", "OVERLAY_SERIES_NUMBER", "RIGHT_LUNG_RGB",
    "SECONDARY_CAPTURE_IMAGE_STORAGE", "WARNING_RGB", "OverlayRenderer",
    "SecondaryCaptureOverlay", "lung_slices", "write_overlay",
]

OVERLAY_KIND = ResultKind.OVERLAY
OVERLAY_SERIES_NUMBER = 9003
OVERLAY_SUBDIR = "overlay"
SUMMARY_FILE_NAME = "sc-summary.dcm"
DERIVATION_DESCRIPTION = (
    "Source CT slice in a lung window (W 1500 / L -600) with burned-in AI results: lung "
    "contours, lesion outlines and numbers, classifier activation map. "
    + NOT_FOR_DIAGNOSTIC_USE
)
SUMMARY_DERIVATION_DESCRIPTION = (
    "Summary of the AI analysis of the CT series with a thumbnail of the source slice. "
    + NOT_FOR_DIAGNOSTIC_USE
)
LO_MAX_CHARS = 64


def overlay_series_uid(uid_root: str) -> str:
    """SeriesInstanceUID of the overlay series of the job with ``uid_root``."""
    return derive_uid(uid_root, "overlay", "series")


def overlay_instance_uid(uid_root: str, source_sop_instance_uid: str) -> str:
    """SOPInstanceUID of the overlay image drawn from one source CT instance."""
    return derive_uid(uid_root, "overlay", "instance", source_sop_instance_uid)


def summary_instance_uid(uid_root: str) -> str:
    """SOPInstanceUID of the summary image."""
    return derive_uid(uid_root, "overlay", "summary")


def lung_slices(result: StudyResult, every_nth_slice: int = 1) -> list[int]:
    """z indices to draw: every ``every_nth_slice``-th slice with lung, plus each lesion's
    largest slice (so no lesion is left out by the thinning), ascending."""
    if every_nth_slice < 1:
        raise ValueError(f"every_nth_slice must be >= 1, got {every_nth_slice}")
    has_lung = np.flatnonzero(result.lungs.both.any(axis=(1, 2)))
    chosen = {int(z) for z in has_lung[::every_nth_slice]}
    n_slices = result.volume.shape[0]
    chosen.update(
        lesion.largest_slice for lesion in result.lesions if 0 <= lesion.largest_slice < n_slices
    )
    return sorted(chosen)


def _software_versions(result: StudyResult) -> list[str]:
    """Software Versions values: this software, then each model's name and version (LO)."""
    values = [SOFTWARE_VERSIONS, *(model_text(model) for model in result_models(result))]
    return [value[:LO_MAX_CHARS] for value in dict.fromkeys(values)]


def _written(path: Path, sop_instance_uid: str, series_instance_uid: str) -> ResultFile:
    return ResultFile(
        path=path, kind=OVERLAY_KIND, sop_class_uid=SECONDARY_CAPTURE_IMAGE_STORAGE,
        sop_instance_uid=sop_instance_uid, series_instance_uid=series_instance_uid,
    )


def _series_context(result: StudyResult, uid_root: str, series_number: int) -> SeriesContext:
    return SeriesContext(
        study_instance_uid=result.volume.study_instance_uid,
        series_uid=overlay_series_uid(uid_root),
        series_number=series_number,
        created=datetime.now(),
        software_versions=_software_versions(result),
        equipment=equipment_for(result),
    )


def _orientation(renderer: OverlayRenderer) -> tuple[str, str]:
    """Patient Orientation of a slice image: the main patient direction of rows and columns."""
    row, column = renderer.patient_orientation
    return row[0], column[0]


def write_overlay(
    result: StudyResult,
    out_dir: Path,
    uid_root: str,
    *,
    series_number: int = OVERLAY_SERIES_NUMBER,
    every_nth_slice: int = 1,
) -> list[ResultFile]:
    """Write the overlay series of ``result`` under ``out_dir/overlay``, return its files.

    One image per lung slice (see ``lung_slices``) in the viewer's order of the source
    images, then the summary image with the last Instance Number.
    """
    if series_number < 1:
        raise ValueError(f"series_number must be positive, got {series_number}")
    started = time.perf_counter()
    renderer = OverlayRenderer(result)
    slices = sorted(lung_slices(result, every_nth_slice), key=lambda z: renderer.positions[z])
    context = _series_context(result, uid_root, series_number)
    folder = Path(out_dir) / OVERLAY_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    datasets = result.volume.datasets
    written: list[ResultFile] = []
    for instance_number, z in enumerate(slices, start=1):
        spec = ImageSpec(
            sop_uid=overlay_instance_uid(uid_root, str(datasets[z].SOPInstanceUID)),
            instance_number=instance_number, source=datasets[z],
            derivation=DERIVATION_DESCRIPTION, pixel_spacing_mm=renderer.pixel_spacing_mm,
            patient_orientation=_orientation(renderer),
        )
        path = folder / f"sc-{instance_number:04d}.dcm"
        sc_image(context, renderer.render_slice(z), spec).save_as(path, enforce_file_format=True)
        written.append(_written(path, spec.sop_uid, context.series_uid))
    thumb_z, _ = thumbnail_slice(result)
    spec = ImageSpec(
        sop_uid=summary_instance_uid(uid_root), instance_number=len(slices) + 1,
        source=datasets[thumb_z], derivation=SUMMARY_DERIVATION_DESCRIPTION,
        pixel_spacing_mm=None, patient_orientation=None,
    )
    path = folder / SUMMARY_FILE_NAME
    sc_image(context, render_summary(result, renderer), spec).save_as(
        path, enforce_file_format=True
    )
    written.append(_written(path, spec.sop_uid, context.series_uid))
    logger.info(
        "wrote overlay series %s: %d slice images and a summary in %.2f s",
        context.series_uid, len(slices), time.perf_counter() - started,
    )
    return written


class SecondaryCaptureOverlay:
    """The overlay writer the runner calls (``pipeline.runner.OverlayWriter``)."""

    def __init__(
        self, series_number: int = OVERLAY_SERIES_NUMBER, every_nth_slice: int = 1
    ) -> None:
        if every_nth_slice < 1:
            raise ValueError(f"every_nth_slice must be >= 1, got {every_nth_slice}")
        self.series_number = series_number
        self.every_nth_slice = every_nth_slice

    def write(self, result: StudyResult, out_dir: Path, uid_root: str) -> list[ResultFile]:
        return write_overlay(
            result, out_dir, uid_root,
            series_number=self.series_number, every_nth_slice=self.every_nth_slice,
        )
