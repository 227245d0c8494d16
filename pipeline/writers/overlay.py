"""Burned-in overlay series for viewers without SEG support (Secondary Capture, RGB).

Many PACS viewers cannot display a DICOM SEG, so the results are also drawn into ordinary
images: one Secondary Capture Image (PS3.3 A.8.1) per CT slice that contains lung, showing the
slice in the lung window with the right and left lung contours, the lesion outlines with their
numbers, the classifier's activation map inside the lungs, a legend and the text "NOT FOR
DIAGNOSTIC USE"; then one summary image with the findings in words and numbers. Every image
is single-frame 8-bit RGB, uncompressed, in one new series of the source study, and
references the CT slice it was drawn from (Source Image Sequence). UIDs derive from the job's
``uid_root``, so writing again gives the same instances.

The Secondary Capture IOD has no Image Plane or Frame of Reference module, so these images
carry no ImagePositionPatient/ImageOrientationPatient; the in-plane pixel spacing is kept as
Pixel Spacing (Basic Pixel Spacing Calibration macro of the SC Image module, so viewers
measure in mm) and the orientation as Patient Orientation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from pipeline.types import Classification, Lesion, ModelInfo, StudyResult
from pipeline.writers import render
from pipeline.writers.seg import (
    DEVICE_SERIAL_NUMBER,
    LEFT_LUNG_RGB,
    LESION_RGB,
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
    RIGHT_LUNG_RGB,
    SOFTWARE_VERSIONS,
    lung_model,
)
from pipeline.writers.uids import derive_uid

logger = logging.getLogger(__name__)

OVERLAY_KIND = "OVERLAY"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
OVERLAY_SERIES_NUMBER = 9003
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
OVERLAY_SERIES_DESCRIPTION = f"AI overlay - {NOT_FOR_DIAGNOSTIC_USE}"
SUMMARY_TITLE = "Chest CT AI analysis - summary"
OVERLAY_SUBDIR = "overlay"
SUMMARY_FILE_NAME = "sc-summary.dcm"
CONVERSION_TYPE = "WSD"  # workstation (PS3.3 C.8.6.1)
MODALITY = "OT"
BODY_PART_EXAMINED = "CHEST"
IMAGE_TYPE = ["DERIVED", "SECONDARY"]
DERIVATION_DESCRIPTION = (
    "Source CT slice in a lung window (W 1500 / L -600) with burned-in AI results: lung "
    "contours, lesion outlines and numbers, classifier activation map. "
    + NOT_FOR_DIAGNOSTIC_USE
)
SUMMARY_DERIVATION_DESCRIPTION = (
    "Summary of the AI analysis of the CT series with a thumbnail of the source slice. "
    + NOT_FOR_DIAGNOSTIC_USE
)
# Purpose of Reference of a Source Image Sequence item (CID 7202).
SOURCE_PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")

LUNG_WINDOW_CENTER_HU = -600.0
LUNG_WINDOW_WIDTH_HU = 1500.0
# Small matrices are enlarged (nearest neighbour) to at least this size so text stays legible.
MIN_CANVAS_PX = 384
FONT_SHARE_OF_WIDTH = 0.026  # text height relative to the image width (13 px at 512)
MIN_FONT_PX = 10
LARGE_TEXT_FACTOR = 1.4  # side labels (R/L) and lesion numbers
MARGIN_PX = 4
LUNG_CONTOUR_PX = 1
LESION_CONTOUR_PX = 2
HEAT_ALPHA_MAX = 0.55
HEAT_MIN_ACTIVATION = 0.2  # activation below this is not drawn
WARNING_RGB: render.RGB = (255, 200, 0)
TEXT_RGB: render.RGB = (255, 255, 255)
LESION_OUTLINE_RGB: render.RGB = LESION_RGB[0]

SUMMARY_WIDTH_PX = 1024
SUMMARY_MIN_HEIGHT_PX = 768
SUMMARY_MAX_HEIGHT_PX = 2048
SUMMARY_FONT_PX = 15
SUMMARY_TITLE_FONT_PX = 22
SUMMARY_PAD_PX = 16
THUMBNAIL_PX = 384
SUMMARY_MAX_LESION_ROWS = 40


@dataclass(frozen=True)
class OverlayFile:
    """One written overlay image (the fields of ``dicomnode.jobs.processing.ResultObject``)."""

    path: Path
    kind: str  # always OVERLAY_KIND
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


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


@dataclass(frozen=True)
class _LesionBox:
    """A lesion with its bounding box (z0..z1, y0..y1, x0..x1, ends exclusive)."""

    lesion: Lesion
    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int
    label: render.Stamp


def _extent(flags: npt.ArrayLike) -> tuple[int, int]:
    """(first, last + 1) index of the True values of a non-empty 1-D flag array."""
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1]) + 1


def _model_text(model: ModelInfo) -> str:
    return f"{model.name} {model.version}".strip()


def _instance_number(ds: Dataset, z: int) -> int:
    value = ds.get("InstanceNumber")
    try:
        return int(value) if value not in (None, "") else z + 1
    except (TypeError, ValueError):
        return z + 1


class OverlayRenderer:
    """Draws the overlay of any slice of one study result (set-up done once per study)."""

    def __init__(self, result: StudyResult) -> None:
        volume = result.volume
        shape = volume.shape
        for name, array in (("left lung", result.lungs.left), ("right lung", result.lungs.right)):
            if array.shape != shape:
                raise ValueError(f"{name} mask shape {array.shape} != volume shape {shape}")
        activation = result.classification.activation if result.classification else None
        if activation is not None and activation.shape != shape:
            raise ValueError(f"activation shape {activation.shape} != volume shape {shape}")
        self._result = result
        self._activation = activation
        rows, cols = shape[1], shape[2]
        self.scale = max(1, math.ceil(MIN_CANVAS_PX / max(rows, cols)))
        self.rows, self.cols = rows * self.scale, cols * self.scale
        self.font_px = max(MIN_FONT_PX, round(self.cols * FONT_SHARE_OF_WIDTH))
        self._face = render.font(self.font_px)
        self._header = render.text_stamp(self._header_lines(), self._face)
        self._legend = render.legend_stamp(
            [("Right lung", RIGHT_LUNG_RGB), ("Left lung", LEFT_LUNG_RGB),
             ("Lesion", LESION_OUTLINE_RGB)],
            self._face,
            heat_title="Activation" if activation is not None else None,
        )
        row_dir = volume.direction[:, 0]
        side_face = render.font(round(self.font_px * LARGE_TEXT_FACTOR))
        self._label_face = render.font(round(self.font_px * LARGE_TEXT_FACTOR))
        self._edge_labels = (
            render.text_stamp([(render.orientation_label(-row_dir), TEXT_RGB)], side_face),
            render.text_stamp([(render.orientation_label(row_dir), TEXT_RGB)], side_face),
        )
        self._boxes = [self._box(lesion) for lesion in result.lesions if lesion.mask.any()]

    def _header_lines(self) -> list[tuple[str, render.RGB]]:
        result = self._result
        width = self.cols - 2 * MARGIN_PX
        lungs = lung_model(result)
        classification = result.classification
        if classification is not None:
            models = f"Model {_model_text(classification.model)} | lungs {_model_text(lungs)}"
            finding = classification_line(classification)
        else:
            models = f"Lungs {_model_text(lungs)}"
            finding = "Classification: not run"
        return [
            (NOT_FOR_DIAGNOSTIC_USE, WARNING_RGB),
            (render.fit_text(models, self._face, width), TEXT_RGB),
            (render.fit_text(finding, self._face, width), TEXT_RGB),
        ]

    def _box(self, lesion: Lesion) -> _LesionBox:
        mask = lesion.mask
        if mask.shape != self._result.volume.shape:
            raise ValueError(f"lesion {lesion.number} mask shape {mask.shape} != volume shape")
        z0, z1 = _extent(mask.any(axis=(1, 2)))
        y0, y1 = _extent(mask[z0:z1].any(axis=(0, 2)))
        x0, x1 = _extent(mask[z0:z1].any(axis=(0, 1)))
        label = render.text_stamp([(str(lesion.number), LESION_OUTLINE_RGB)], self._label_face)
        return _LesionBox(lesion, z0, z1, y0, y1, x0, x1, label)

    def render_slice(self, z: int, *, annotate: bool = True) -> render.RgbImage:
        """RGB overlay of slice ``z``; ``annotate`` adds the text, legend and side labels."""
        volume = self._result.volume
        if not 0 <= z < volume.shape[0]:
            raise ValueError(f"slice {z} outside 0..{volume.shape[0] - 1}")
        s = self.scale
        gray = render.window_to_gray(volume.hu[z], LUNG_WINDOW_CENTER_HU, LUNG_WINDOW_WIDTH_HU)
        rgb = render.gray_to_rgb(render.upscale(gray, s))
        self._draw_lungs(rgb, z)
        present = [box for box in self._boxes if box.z0 <= z < box.z1]
        for box in present:
            crop = render.upscale(box.lesion.mask[z, box.y0 : box.y1, box.x0 : box.x1], s)
            if crop.any():
                region = rgb[box.y0 * s : box.y1 * s, box.x0 * s : box.x1 * s]
                render.paint(region, render.outline(crop, LESION_CONTOUR_PX), LESION_OUTLINE_RGB)
        for box in present:
            if box.lesion.mask[z, box.y0 : box.y1, box.x0 : box.x1].any():
                self._paste_label(rgb, box)
        if annotate:
            self._annotate(rgb, z)
        return rgb

    def _draw_lungs(self, rgb: render.RgbImage, z: int) -> None:
        """Heat map inside the lungs, then both lung contours, within the lungs' bounding box
        (working on that box only keeps a 512 x 512 slice at about a millisecond)."""
        lungs, s = self._result.lungs, self.scale
        both = lungs.left[z] | lungs.right[z]
        if not both.any():
            return
        y0, y1 = _extent(both.any(axis=1))
        x0, x1 = _extent(both.any(axis=0))
        box = (slice(y0 * s, y1 * s), slice(x0 * s, x1 * s))
        region = np.ascontiguousarray(rgb[box])
        left = render.upscale(lungs.left[z, y0:y1, x0:x1], s)
        right = render.upscale(lungs.right[z, y0:y1, x0:x1], s)
        if self._activation is not None:
            render.blend_heat(
                region, render.upscale(self._activation[z, y0:y1, x0:x1], s), left | right,
                alpha_max=HEAT_ALPHA_MAX, min_activation=HEAT_MIN_ACTIVATION,
            )
        render.paint(region, render.outline(right, LUNG_CONTOUR_PX), RIGHT_LUNG_RGB)
        render.paint(region, render.outline(left, LUNG_CONTOUR_PX), LEFT_LUNG_RGB)
        rgb[box] = region

    def _paste_label(self, rgb: render.RgbImage, box: _LesionBox) -> None:
        """Lesion number just right of its box (left of it at the image's right edge)."""
        s, label = self.scale, box.label
        x = box.x1 * s + 2
        if x + label.width > self.cols:
            x = box.x0 * s - label.width - 2
        y = max(0, box.y0 * s - label.height // 2)
        label.paste(rgb, x, y)

    def _annotate(self, rgb: render.RgbImage, z: int) -> None:
        n_slices = self._result.volume.shape[0]
        instance = _instance_number(self._result.volume.datasets[z], z)
        self._header.paste(rgb, MARGIN_PX, MARGIN_PX)
        self._legend.paste(
            rgb, self.cols - self._legend.width - MARGIN_PX,
            self.rows - self._legend.height - MARGIN_PX,
        )
        slice_text = f"Slice {z + 1}/{n_slices} | CT image {instance}"
        stamp = render.text_stamp(
            [(slice_text, TEXT_RGB)], self._face, stroke_px=0,
            background_rgba=render.STAMP_BACKGROUND_RGBA,
        )
        stamp.paste(rgb, MARGIN_PX, self.rows - stamp.height - MARGIN_PX)
        left_label, right_label = self._edge_labels
        left_label.paste(rgb, MARGIN_PX, (self.rows - left_label.height) // 2)
        right_label.paste(
            rgb, self.cols - right_label.width - MARGIN_PX, (self.rows - right_label.height) // 2
        )

    @property
    def edge_labels(self) -> tuple[str, str]:
        """Patient directions at the image's left and right edges (e.g. ("R", "L"))."""
        row_dir = self._result.volume.direction[:, 0]
        return render.orientation_label(-row_dir), render.orientation_label(row_dir)

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        """(row spacing, column spacing) of the drawn image."""
        _, dy, dx = self._result.volume.spacing_mm
        return dy / self.scale, dx / self.scale

    @property
    def patient_orientation(self) -> list[str]:
        """Patient Orientation (0020,0020): directions of the image's rows and columns."""
        direction = self._result.volume.direction
        return [render.orientation_label(direction[:, axis]) for axis in (0, 1)]


def _thumbnail_slice(result: StudyResult) -> tuple[int, Lesion | None]:
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


LUNG_COLUMNS_PX = (0, 90, 210, 320)
LESION_COLUMNS_PX = (0, 40, 120, 230, 320, 420)
HEADING_RGB: render.RGB = (150, 200, 255)


def render_summary(result: StudyResult, renderer: OverlayRenderer) -> render.RgbImage:
    """The summary image: classification, lung and lesion tables, models, a thumbnail."""
    canvas = _SummaryCanvas(SUMMARY_WIDTH_PX, SUMMARY_MAX_HEIGHT_PX)
    title_face = render.font(SUMMARY_TITLE_FONT_PX)
    canvas.draw.text((SUMMARY_PAD_PX, canvas.y), SUMMARY_TITLE, font=title_face, fill=TEXT_RGB)
    canvas.y += SUMMARY_TITLE_FONT_PX + 8
    canvas.draw.text(
        (SUMMARY_PAD_PX, canvas.y), NOT_FOR_DIAGNOSTIC_USE, font=title_face, fill=WARNING_RGB
    )
    canvas.y += SUMMARY_TITLE_FONT_PX + 12
    text_px = SUMMARY_WIDTH_PX - THUMBNAIL_PX - 3 * SUMMARY_PAD_PX
    top = canvas.y
    volume = result.volume
    dz, dy, dx = volume.spacing_mm
    canvas.line(
        f"CT series: {volume.shape[0]} slices of {volume.shape[1]} x {volume.shape[2]}, "
        f"voxel {dx:.2f} x {dy:.2f} x {dz:.2f} mm", max_px=text_px,
    )
    canvas.gap()

    classification = result.classification
    if classification is None:
        canvas.line("Classification: not run", HEADING_RGB)
    else:
        canvas.line(
            f"Classification: {classification.label} ({_model_text(classification.model)})",
            HEADING_RGB, max_px=text_px,
        )
        canvas.line(classification_line(classification), max_px=text_px)
        verdict = classification.verdict
        if verdict is not None and verdict.in_validated_domain:  # calibrated, in domain
            ranked = sorted(classification.probabilities.items(), key=lambda kv: -kv[1])
            for name, probability in ranked:
                mark = "  <- predicted" if name == classification.label else ""
                canvas.row([name, f"p = {probability:.3f}{mark}"], (16, 150))
    canvas.gap()

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

    canvas.line("Lesions", HEADING_RGB)
    localized = any(item.lesion_burden_percent is not None for item in result.lung_stats)
    lesions = sorted(result.lesions, key=lambda lesion: lesion.number)
    if not lesions:
        canvas.line("No lesion found." if localized or not result.lung_stats else
                    "Lesion localization did not run.")
    else:
        canvas.row(["#", "Side", "Volume (mL)", "Mean (HU)", "Peak act.", "CT image"],
                   LESION_COLUMNS_PX)
        for lesion in lesions[:SUMMARY_MAX_LESION_ROWS]:
            z = lesion.largest_slice
            image = (
                str(_instance_number(volume.datasets[z], z))
                if 0 <= z < len(volume.datasets) else "-"
            )
            canvas.row(
                [str(lesion.number), lesion.side, _number(lesion.volume_ml, 2),
                 _number(lesion.mean_hu, 0), _number(lesion.peak_activation, 2), image],
                LESION_COLUMNS_PX,
            )
        if len(lesions) > SUMMARY_MAX_LESION_ROWS:
            canvas.line(f"... and {len(lesions) - SUMMARY_MAX_LESION_ROWS} more (see the SR)")
    canvas.gap()

    # Thumbnail in the right column, level with the first text line.
    z, shown = _thumbnail_slice(result)
    thumb = render.downscale(renderer.render_slice(z, annotate=False), THUMBNAIL_PX)
    thumb_x = SUMMARY_WIDTH_PX - SUMMARY_PAD_PX - thumb.shape[1]
    canvas.image.paste(Image.fromarray(thumb), (thumb_x, top))
    left_label, right_label = renderer.edge_labels
    canvas.draw.text((thumb_x + 4, top + thumb.shape[0] // 2), left_label, font=canvas.face,
                     fill=TEXT_RGB, stroke_width=1, stroke_fill=(0, 0, 0))
    canvas.draw.text(
        (thumb_x + thumb.shape[1] - 4 - render.text_width(right_label, canvas.face),
         top + thumb.shape[0] // 2),
        right_label, font=canvas.face, fill=TEXT_RGB, stroke_width=1, stroke_fill=(0, 0, 0),
    )
    instance = _instance_number(volume.datasets[z], z)
    caption = f"CT image {instance} (slice {z + 1})"
    if shown is not None:
        caption += f": largest lesion, #{shown.number}"
    canvas.draw.text((thumb_x, top + thumb.shape[0] + 4), caption, font=canvas.face,
                     fill=TEXT_RGB)
    canvas.y = max(canvas.y, top + thumb.shape[0] + 4 + canvas.line_px + SUMMARY_PAD_PX)

    canvas.line("Models", HEADING_RGB)
    full_px = SUMMARY_WIDTH_PX - 2 * SUMMARY_PAD_PX
    for model in _models(result):
        checksum = f"sha256 {model.sha256}" if model.sha256 else "no weights"
        canvas.line(f"{_model_text(model)}   {checksum}", max_px=full_px)
    canvas.gap()
    canvas.line(f"{NOT_FOR_DIAGNOSTIC_USE}. Research output of models trained on synthetic "
                "data; verify every finding on the original images.", WARNING_RGB,
                max_px=full_px)
    height = min(SUMMARY_MAX_HEIGHT_PX, max(SUMMARY_MIN_HEIGHT_PX, canvas.y + SUMMARY_PAD_PX))
    height += height % 2
    return np.asarray(canvas.image, dtype=np.uint8)[:height].copy()


def _models(result: StudyResult) -> list[ModelInfo]:
    """Every algorithm of the result, the classifier's model included, in stage order."""
    models = list(result.algorithms)
    if result.classification is not None and result.classification.model not in models:
        models.append(result.classification.model)
    return models


def _copy_patient_study(target: Dataset, source: Dataset) -> None:
    """Patient and General Study modules as the source has them (type 2: empty if absent)."""
    for keyword in ("SpecificCharacterSet", "IssuerOfPatientID", "StudyDescription"):
        if keyword in source:
            setattr(target, keyword, source[keyword].value)
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
        "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    ):
        value = source[keyword].value if keyword in source else None
        setattr(target, keyword, "" if value is None else value)


@dataclass(frozen=True)
class _SeriesContext:
    """What every image of one overlay series shares."""

    result: StudyResult
    series_uid: str
    series_number: int
    created: datetime
    software_versions: list[str]


def _sc_dataset(
    context: _SeriesContext,
    rgb: render.RgbImage,
    *,
    sop_uid: str,
    instance_number: int,
    source: Dataset,
    derivation: str,
    pixel_spacing_mm: tuple[float, float] | None,
    patient_orientation: Sequence[str],
) -> Dataset:
    """A Secondary Capture Image dataset (PS3.3 A.8.1) around one RGB image."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (rows, columns, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    date, clock = context.created.strftime("%Y%m%d"), context.created.strftime("%H%M%S")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    _copy_patient_study(ds, source)
    if "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 100"
    # SOP Common
    ds.SOPClassUID = SECONDARY_CAPTURE_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, clock
    # General Study / Series
    ds.StudyInstanceUID = context.result.volume.study_instance_uid
    ds.Modality = MODALITY
    ds.SeriesInstanceUID = context.series_uid
    ds.SeriesNumber = context.series_number
    ds.SeriesDate, ds.SeriesTime = date, clock
    ds.SeriesDescription = OVERLAY_SERIES_DESCRIPTION
    # The chest is not a paired body part, so Laterality (type 2C) is not needed.
    ds.BodyPartExamined = BODY_PART_EXAMINED
    # General Equipment and SC Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER_MODEL_NAME
    ds.DeviceSerialNumber = DEVICE_SERIAL_NUMBER
    ds.SoftwareVersions = context.software_versions
    ds.ConversionType = CONVERSION_TYPE
    ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = MANUFACTURER_MODEL_NAME
    ds.SecondaryCaptureDeviceSoftwareVersions = context.software_versions
    # General Image, General Reference, SC Image
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = list(patient_orientation) or ""
    ds.ContentDate, ds.ContentTime = date, clock
    ds.ImageType = IMAGE_TYPE
    ds.DerivationDescription = derivation
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_PURPOSE_CODE
    item.PurposeOfReferenceCodeSequence = [purpose]
    ds.SourceImageSequence = [item]
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    ds.ImageComments = NOT_FOR_DIAGNOSTIC_USE
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, clock
    if pixel_spacing_mm is not None:
        spacing = [round(float(v), 6) for v in pixel_spacing_mm]
        ds.PixelSpacing = spacing
        ds.NominalScannedPixelSpacing = spacing
    # Image Pixel: interleaved 8-bit RGB
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    return ds


def _software_versions(result: StudyResult) -> list[str]:
    """Software Versions values: this software, then each model's name and version (LO)."""
    values = [SOFTWARE_VERSIONS, *(_model_text(model) for model in _models(result))]
    return [value[:64] for value in dict.fromkeys(values)]


def _written(path: Path, ds: Dataset) -> OverlayFile:
    return OverlayFile(
        path=path, kind=OVERLAY_KIND, sop_class_uid=SECONDARY_CAPTURE_IMAGE_STORAGE,
        sop_instance_uid=str(ds.SOPInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
    )


def write_overlay(
    result: StudyResult,
    out_dir: Path,
    uid_root: str,
    *,
    series_number: int = OVERLAY_SERIES_NUMBER,
    every_nth_slice: int = 1,
) -> list[OverlayFile]:
    """Write the overlay series of ``result`` under ``out_dir/overlay``, return its files.

    One image per lung slice (see ``lung_slices``) in slice order, then the summary image
    with the last Instance Number.
    """
    if series_number < 1:
        raise ValueError(f"series_number must be positive, got {series_number}")
    started = time.perf_counter()
    slices = lung_slices(result, every_nth_slice)
    renderer = OverlayRenderer(result)
    context = _SeriesContext(
        result=result,
        series_uid=overlay_series_uid(uid_root),
        series_number=series_number,
        created=datetime.now(),
        software_versions=_software_versions(result),
    )
    folder = Path(out_dir) / OVERLAY_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    datasets = result.volume.datasets
    written: list[OverlayFile] = []
    for instance_number, z in enumerate(slices, start=1):
        source = datasets[z]
        ds = _sc_dataset(
            context, renderer.render_slice(z),
            sop_uid=overlay_instance_uid(uid_root, str(source.SOPInstanceUID)),
            instance_number=instance_number, source=source,
            derivation=DERIVATION_DESCRIPTION, pixel_spacing_mm=renderer.pixel_spacing_mm,
            patient_orientation=renderer.patient_orientation,
        )
        path = folder / f"sc-{instance_number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(_written(path, ds))
    thumb_z, _ = _thumbnail_slice(result)
    summary = _sc_dataset(
        context, render_summary(result, renderer),
        sop_uid=summary_instance_uid(uid_root), instance_number=len(slices) + 1,
        source=datasets[thumb_z], derivation=SUMMARY_DERIVATION_DESCRIPTION,
        pixel_spacing_mm=None, patient_orientation=[],
    )
    path = folder / SUMMARY_FILE_NAME
    summary.save_as(path, enforce_file_format=True)
    written.append(_written(path, summary))
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

    def write(self, result: StudyResult, out_dir: Path, uid_root: str) -> list[OverlayFile]:
        return write_overlay(
            result, out_dir, uid_root,
            series_number=self.series_number, every_nth_slice=self.every_nth_slice,
        )


def classification_line(classification: Classification) -> str:
    """The AI verdict in one line: no probability for an input the model was not validated on."""
    verdict = classification.verdict
    if verdict is None:
        return (f"Classification: {classification.label} "
                "(uncalibrated, validated domain not checked)")
    return f"AI verdict: {verdict.statement}"
