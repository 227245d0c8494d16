"""Drawing one overlay image: a CT slice in the lung window with the results burned in.

``OverlayRenderer`` does the per-study set-up once (scale, fonts, header text, legend, lesion
bounding boxes) and then draws any slice: the slice in a lung window, the classifier's
activation map inside the lungs, both lung contours, the lesion outlines with their numbers,
and (when annotated) the header with "NOT FOR DIAGNOSTIC USE", the legend, the patient sides
and the slice's number as a viewer shows it (``pipeline.writers.slice_numbers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.preprocessing import Box, bounding_box
from pipeline.types import Classification, Lesion, ModelInfo, StudyResult
from pipeline.writers import render
from pipeline.writers.seg import LEFT_LUNG_RGB, LESION_RGB, RIGHT_LUNG_RGB, lung_model
from pipeline.writers.slice_numbers import instance_label, viewer_positions

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
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


@dataclass(frozen=True)
class _LesionBox(Box):
    """A lesion with its bounding box (z0..z1, y0..y1, x0..x1, ends exclusive)."""

    lesion: Lesion
    label: render.Stamp


def extent(flags: npt.ArrayLike) -> tuple[int, int]:
    """(first, last + 1) index of the True values of a non-empty 1-D flag array."""
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1]) + 1


def classification_line(classification: Classification) -> str:
    """The AI verdict in one line: no probability for an input the model was not validated on."""
    verdict = classification.verdict
    if verdict is None:
        return (f"Classification: {classification.label} "
                "(uncalibrated, validated domain not checked)")
    return f"AI verdict: {verdict.statement}"


def model_text(model: ModelInfo) -> str:
    """An algorithm's name and version as the images print it."""
    return f"{model.name} {model.version}".strip()



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
        self.positions = viewer_positions(volume.datasets)

    def _header_lines(self) -> list[tuple[str, render.RGB]]:
        result = self._result
        width = self.cols - 2 * MARGIN_PX
        lungs = lung_model(result)
        classification = result.classification
        if classification is not None:
            models = f"Model {model_text(classification.model)} | lungs {model_text(lungs)}"
            finding = classification_line(classification)
        else:
            models = f"Lungs {model_text(lungs)}"
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
        box = bounding_box(mask)
        if box is None:
            raise ValueError(f"lesion {lesion.number} has an empty mask")
        label = render.text_stamp([(str(lesion.number), LESION_OUTLINE_RGB)], self._label_face)
        return _LesionBox(box.z0, box.z1, box.y0, box.y1, box.x0, box.x1, lesion, label)

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
        y0, y1 = extent(both.any(axis=1))
        x0, x1 = extent(both.any(axis=0))
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
        instance = instance_label(self._result.volume.datasets[z], z)
        self._header.paste(rgb, MARGIN_PX, MARGIN_PX)
        self._legend.paste(
            rgb, self.cols - self._legend.width - MARGIN_PX,
            self.rows - self._legend.height - MARGIN_PX,
        )
        slice_text = f"Slice {self.positions[z]}/{n_slices} | CT image {instance}"
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

