"""The summary image of the overlay series: the findings in words and numbers.

A black 1024-pixel-wide canvas with the title and "NOT FOR DIAGNOSTIC USE", the series'
geometry, the classification with every class's probability, a table of both lungs, a table
of the lesions (with the CT image each is largest on, numbered as a viewer shows it), a
thumbnail of the largest lesion's slice, the models with their weights checksums and a closing
warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipeline.types import Lesion, StudyResult
from pipeline.writers import render
from pipeline.writers.equipment import result_models
from pipeline.writers.overlay_draw import (
    NOT_FOR_DIAGNOSTIC_USE,
    TEXT_RGB,
    WARNING_RGB,
    OverlayRenderer,
    classification_line,
    model_text,
)
from pipeline.writers.slice_numbers import instance_label

SUMMARY_TITLE = "Chest CT AI analysis - summary"
SUMMARY_WIDTH_PX = 1024
SUMMARY_MIN_HEIGHT_PX = 768
SUMMARY_MAX_HEIGHT_PX = 2048
SUMMARY_FONT_PX = 15
SUMMARY_TITLE_FONT_PX = 22
SUMMARY_PAD_PX = 16
THUMBNAIL_PX = 384
SUMMARY_MAX_LESION_ROWS = 40
LUNG_COLUMNS_PX = (0, 90, 210, 320)
LESION_COLUMNS_PX = (0, 40, 120, 230, 320, 420)
HEADING_RGB: render.RGB = (150, 200, 255)
TEXT_COLUMN_PX = SUMMARY_WIDTH_PX - THUMBNAIL_PX - 3 * SUMMARY_PAD_PX
FULL_WIDTH_PX = SUMMARY_WIDTH_PX - 2 * SUMMARY_PAD_PX
CLOSING_WARNING = (
    f"{NOT_FOR_DIAGNOSTIC_USE}. Research output of models trained on synthetic data; verify "
    "every finding on the original images."
)


def thumbnail_slice(result: StudyResult) -> tuple[int, Lesion | None]:
    """The largest lesion's largest slice, else the slice with the most lung."""
    lesions = [lesion for lesion in result.lesions if lesion.mask.any()]
    if lesions:
        largest = max(lesions, key=lambda lesion: (lesion.volume_ml, -lesion.number))
        return largest.largest_slice, largest
    area = result.lungs.both.sum(axis=(1, 2))
    return int(np.argmax(area)), None


def _number(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


class _SummaryCanvas:
    """Text lines and aligned columns drawn top-down on a black canvas."""

    def __init__(self, width: int, height: int) -> None:
        self.image = Image.new("RGB", (width, height), (0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.face = render.font(SUMMARY_FONT_PX)
        self.line_px = SUMMARY_FONT_PX + 6
        self.y = SUMMARY_PAD_PX

    def line(self, text: str, color: render.RGB = TEXT_RGB, x: int = SUMMARY_PAD_PX,
             max_px: int | None = None) -> None:
        if max_px is not None:
            text = render.fit_text(text, self.face, max_px)
        self.draw.text((x, self.y), text, font=self.face, fill=color)
        self.y += self.line_px

    def row(self, cells: Sequence[str], columns_px: Sequence[int],
            color: render.RGB = TEXT_RGB) -> None:
        for text, x in zip(cells, columns_px, strict=True):
            self.draw.text((SUMMARY_PAD_PX + x, self.y), text, font=self.face, fill=color)
        self.y += self.line_px

    def gap(self) -> None:
        self.y += self.line_px // 2


def _title(canvas: _SummaryCanvas) -> None:
    title_face = render.font(SUMMARY_TITLE_FONT_PX)
    for text, color, gap_px in ((SUMMARY_TITLE, TEXT_RGB, 8),
                                (NOT_FOR_DIAGNOSTIC_USE, WARNING_RGB, 12)):
        canvas.draw.text((SUMMARY_PAD_PX, canvas.y), text, font=title_face, fill=color)
        canvas.y += SUMMARY_TITLE_FONT_PX + gap_px


def _classification(canvas: _SummaryCanvas, result: StudyResult) -> None:
    classification = result.classification
    if classification is None:
        canvas.line("Classification: not run", HEADING_RGB)
    else:
        canvas.line(
            f"Classification: {classification.label} ({model_text(classification.model)})",
            HEADING_RGB, max_px=TEXT_COLUMN_PX,
        )
        canvas.line(classification_line(classification), max_px=TEXT_COLUMN_PX)
        verdict = classification.verdict
        if verdict is not None and verdict.in_validated_domain:  # calibrated, in domain
            ranked = sorted(classification.probabilities.items(), key=lambda kv: -kv[1])
            for name, probability in ranked:
                mark = "  <- predicted" if name == classification.label else ""
                canvas.row([name, f"p = {probability:.3f}{mark}"], (16, 150))
    canvas.gap()


def _lungs(canvas: _SummaryCanvas, result: StudyResult) -> None:
    canvas.line("Lungs", HEADING_RGB)
    canvas.row(["Lung", "Volume (mL)", "Mean (HU)", "Lesion burden (%)"], LUNG_COLUMNS_PX)
    stats = {item.side: item for item in result.lung_stats}
    for side in ("right", "left"):
        item = stats.get(side)
        cells = [side.capitalize(), "-", "-", "-"]
        if item is not None:
            cells = [side.capitalize(), _number(item.volume_ml, 1), _number(item.mean_hu, 0),
                     _number(item.lesion_burden_percent, 2)]
        canvas.row(cells, LUNG_COLUMNS_PX)
    canvas.gap()


def _lesions(canvas: _SummaryCanvas, result: StudyResult) -> None:
    canvas.line("Lesions", HEADING_RGB)
    localized = any(item.lesion_burden_percent is not None for item in result.lung_stats)
    lesions = sorted(result.lesions, key=lambda lesion: lesion.number)
    datasets = result.volume.datasets
    if not lesions:
        canvas.line("No lesion found." if localized or not result.lung_stats else
                    "Lesion localization did not run.")
    else:
        canvas.row(["#", "Side", "Volume (mL)", "Mean (HU)", "Peak act.", "CT image"],
                   LESION_COLUMNS_PX)
        for lesion in lesions[:SUMMARY_MAX_LESION_ROWS]:
            z = lesion.largest_slice
            image = str(instance_label(datasets[z], z)) if 0 <= z < len(datasets) else "-"
            canvas.row(
                [str(lesion.number), lesion.side, _number(lesion.volume_ml, 2),
                 _number(lesion.mean_hu, 0), _number(lesion.peak_activation, 2), image],
                LESION_COLUMNS_PX,
            )
        if len(lesions) > SUMMARY_MAX_LESION_ROWS:
            canvas.line(f"... and {len(lesions) - SUMMARY_MAX_LESION_ROWS} more (see the SR)")
    canvas.gap()


def _thumbnail(canvas: _SummaryCanvas, result: StudyResult, renderer: OverlayRenderer,
               top: int) -> None:
    """The thumbnail in the right column, level with the first text line, with its sides and
    a caption naming the CT image as a viewer numbers it."""
    z, shown = thumbnail_slice(result)
    thumb = render.downscale(renderer.render_slice(z, annotate=False), THUMBNAIL_PX)
    thumb_x = SUMMARY_WIDTH_PX - SUMMARY_PAD_PX - thumb.shape[1]
    canvas.image.paste(Image.fromarray(thumb), (thumb_x, top))
    left_label, right_label = renderer.edge_labels
    middle = top + thumb.shape[0] // 2
    right_x = thumb_x + thumb.shape[1] - 4 - render.text_width(right_label, canvas.face)
    for x, label in ((thumb_x + 4, left_label), (right_x, right_label)):
        canvas.draw.text((x, middle), label, font=canvas.face, fill=TEXT_RGB, stroke_width=1,
                         stroke_fill=(0, 0, 0))
    instance = instance_label(result.volume.datasets[z], z)
    caption = f"CT image {instance} (slice {renderer.positions[z]})"
    if shown is not None:
        caption += f": largest lesion, #{shown.number}"
    canvas.draw.text((thumb_x, top + thumb.shape[0] + 4), caption, font=canvas.face,
                     fill=TEXT_RGB)
    canvas.y = max(canvas.y, top + thumb.shape[0] + 4 + canvas.line_px + SUMMARY_PAD_PX)


def _models(canvas: _SummaryCanvas, result: StudyResult) -> None:
    canvas.line("Models", HEADING_RGB)
    for model in result_models(result):
        checksum = f"sha256 {model.sha256}" if model.sha256 else "no weights"
        canvas.line(f"{model_text(model)}   {checksum}", max_px=FULL_WIDTH_PX)
    canvas.gap()
    canvas.line(CLOSING_WARNING, WARNING_RGB, max_px=FULL_WIDTH_PX)


def render_summary(result: StudyResult, renderer: OverlayRenderer) -> render.RgbImage:
    """The summary image: classification, lung and lesion tables, models, a thumbnail."""
    canvas = _SummaryCanvas(SUMMARY_WIDTH_PX, SUMMARY_MAX_HEIGHT_PX)
    _title(canvas)
    top = canvas.y
    volume = result.volume
    dz, dy, dx = volume.spacing_mm
    canvas.line(
        f"CT series: {volume.shape[0]} slices of {volume.shape[1]} x {volume.shape[2]}, "
        f"voxel {dx:.2f} x {dy:.2f} x {dz:.2f} mm", max_px=TEXT_COLUMN_PX,
    )
    canvas.gap()
    _classification(canvas, result)
    _lungs(canvas, result)
    _lesions(canvas, result)
    _thumbnail(canvas, result, renderer, top)
    _models(canvas, result)
    height = min(SUMMARY_MAX_HEIGHT_PX, max(SUMMARY_MIN_HEIGHT_PX, canvas.y + SUMMARY_PAD_PX))
    height += height % 2
    return np.asarray(canvas.image, dtype=np.uint8)[:height].copy()
