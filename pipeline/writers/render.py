"""Drawing helpers for burned-in overlay images: windowing, contours, heat maps and text.

Everything works on (rows, columns, 3) uint8 RGB arrays with numpy; Pillow only draws text
and small legend patches, which are rendered once as RGBA ``Stamp`` patches and then
composited with numpy. This keeps a 300-slice study at a few milliseconds per slice and
needs no plotting library at run time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

RGB: TypeAlias = tuple[int, int, int]
RgbImage: TypeAlias = npt.NDArray[np.uint8]  # (rows, columns, 3)
Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont
_Scalar = TypeVar("_Scalar", bound=np.generic)

UINT8_MAX = 255
# Anchor colours of the heat-map LUT, evenly spaced over activation 0..1: a dark-violet to
# teal to yellow ramp whose lightness rises monotonically (perceptually ordered, readable by
# colour-blind viewers), written out so no plotting library is needed at run time.
HEAT_ANCHORS_RGB: tuple[RGB, ...] = (
    (68, 1, 84),
    (72, 40, 120),
    (62, 74, 137),
    (49, 104, 142),
    (38, 130, 142),
    (31, 158, 137),
    (53, 183, 121),
    (110, 206, 88),
    (181, 222, 43),
    (253, 231, 37),
)
HEAT_LUT_SIZE = 256
STAMP_BACKGROUND_RGBA = (0, 0, 0, 150)  # translucent black behind legend boxes
TEXT_STROKE_RGB: RGB = (0, 0, 0)


def _heat_lut(anchors: Sequence[RGB], size: int) -> npt.NDArray[np.uint8]:
    """(size, 3) uint8 LUT linearly interpolated between evenly spaced anchor colours."""
    anchor_pos = np.linspace(0.0, 1.0, len(anchors))
    positions = np.linspace(0.0, 1.0, size)
    table = np.asarray(anchors, dtype=np.float64)
    channels = [np.interp(positions, anchor_pos, table[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


HEAT_LUT = _heat_lut(HEAT_ANCHORS_RGB, HEAT_LUT_SIZE)


def window_to_gray(
    hu: npt.NDArray[np.floating], center_hu: float, width_hu: float
) -> npt.NDArray[np.uint8]:
    """Map HU to 0..255 with a linear window (values outside the window saturate)."""
    if width_hu <= 0:
        raise ValueError(f"window width must be positive, got {width_hu}")
    low = center_hu - width_hu / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) * np.float32(
        UINT8_MAX / width_hu
    )
    np.clip(scaled, 0.0, float(UINT8_MAX), out=scaled)
    return (scaled + np.float32(0.5)).astype(np.uint8)


def gray_to_rgb(gray: npt.NDArray[np.uint8]) -> RgbImage:
    """A gray (rows, columns) image as an RGB array with three equal channels."""
    return np.stack([gray, gray, gray], axis=-1)


def upscale(array: npt.NDArray[_Scalar], factor: int) -> npt.NDArray[_Scalar]:
    """Nearest-neighbour enlargement of the first two axes by an integer ``factor``."""
    if factor < 1:
        raise ValueError(f"scale factor must be >= 1, got {factor}")
    if factor == 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


_CROSS = ndimage.generate_binary_structure(2, 1)  # the 4-neighbour cross


def erode(mask: npt.NDArray[np.bool_], iterations: int = 1) -> npt.NDArray[np.bool_]:
    """Binary erosion with the 4-neighbour cross, ``iterations`` times; pixels outside the
    image count as background."""
    if iterations < 1:
        raise ValueError(f"erosion iterations must be >= 1, got {iterations}")
    return np.asarray(
        ndimage.binary_erosion(mask, structure=_CROSS, iterations=iterations, border_value=0),
        dtype=bool,
    )


def outline(mask: npt.NDArray[np.bool_], thickness_px: int = 1) -> npt.NDArray[np.bool_]:
    """The inner boundary band of ``mask``: mask minus its erosion ``thickness_px`` times."""
    if thickness_px < 1:
        raise ValueError(f"outline thickness must be >= 1 px, got {thickness_px}")
    mask = np.asarray(mask, dtype=bool)
    return mask & ~erode(mask, thickness_px)


def paint(rgb: RgbImage, mask: npt.NDArray[np.bool_], color: RGB) -> None:
    """Set the pixels of ``mask`` to ``color`` in place."""
    rgb[mask] = color


def blend_heat(
    rgb: RgbImage,
    activation: npt.NDArray[np.floating],
    inside: npt.NDArray[np.bool_],
    *,
    alpha_max: float,
    min_activation: float,
) -> None:
    """Alpha-blend the heat LUT colour of ``activation`` (0..1) into ``rgb`` inside ``inside``.

    Opacity rises from 0 at ``min_activation`` to ``alpha_max`` at 1, so weak activation stays
    see-through and the anatomy under the map remains readable. Pixels outside ``inside`` are
    never touched. ``rgb`` must be C-contiguous (as ``gray_to_rgb`` returns it).
    """
    if not rgb.flags.c_contiguous:
        raise ValueError("rgb must be a C-contiguous array")
    if not 0.0 <= min_activation < 1.0:
        raise ValueError(f"min_activation must be in [0, 1), got {min_activation}")
    flat = np.flatnonzero(inside & (activation > min_activation))
    if flat.size == 0:
        return
    values = np.minimum(activation.ravel()[flat].astype(np.float32), np.float32(1.0))
    alpha = (values - np.float32(min_activation)) * np.float32(
        alpha_max / (1.0 - min_activation)
    )
    lut_index = (values * np.float32(HEAT_LUT_SIZE - 1) + np.float32(0.5)).astype(np.intp)
    colors = HEAT_LUT[lut_index].astype(np.float32)
    pixels = rgb.reshape(-1, 3)  # a view: rgb is C-contiguous
    base = pixels[flat].astype(np.float32)
    mixed = base + (colors - base) * alpha[:, None] + np.float32(0.5)
    pixels[flat] = np.clip(mixed, 0, UINT8_MAX).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def font(size_px: int) -> Font:
    """Pillow's built-in font at ``size_px`` (needs Pillow >= 10.1 with FreeType)."""
    return ImageFont.load_default(size=size_px)


def text_width(text: str, face: Font) -> int:
    """Width in pixels of ``text`` drawn with ``face``."""
    left, _, right, _ = face.getbbox(text)
    return int(math.ceil(right - left))


def fit_text(text: str, face: Font, max_px: int) -> str:
    """``text``, shortened with "..." until it fits into ``max_px``."""
    if text_width(text, face) <= max_px:
        return text
    while text and text_width(text + "...", face) > max_px:
        text = text[:-1]
    return text + "..."


@dataclass(frozen=True)
class Stamp:
    """A small RGBA patch (text, legend) rendered once and composited onto many images."""

    rgba: npt.NDArray[np.uint8]  # (height, width, 4)

    @property
    def height(self) -> int:
        return int(self.rgba.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgba.shape[1])

    def paste(self, rgb: RgbImage, x: int, y: int) -> None:
        """Alpha-composite the patch onto ``rgb`` with its top-left corner at (x, y), clipped."""
        rows, cols = rgb.shape[:2]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + self.width, cols), min(y + self.height, rows)
        if x0 >= x1 or y0 >= y1:
            return
        patch = self.rgba[y0 - y : y1 - y, x0 - x : x1 - x]
        alpha = patch[..., 3:4].astype(np.uint16)
        target = rgb[y0:y1, x0:x1]
        mixed = (
            target.astype(np.uint16) * (UINT8_MAX - alpha)
            + patch[..., :3].astype(np.uint16) * alpha
            + UINT8_MAX // 2
        ) // UINT8_MAX
        target[...] = mixed.astype(np.uint8)


def _stamp_of(image: Image.Image) -> Stamp:
    return Stamp(np.asarray(image.convert("RGBA"), dtype=np.uint8).copy())


def text_stamp(
    lines: Sequence[tuple[str, RGB]],
    face: Font,
    *,
    line_spacing_px: int = 2,
    stroke_px: int = 1,
    align_right: bool = False,
    background_rgba: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> Stamp:
    """Lines of coloured text with a dark stroke (legible on any background).

    A translucent ``background_rgba`` box with ``stroke_px=0`` is the cheaper alternative for
    text drawn anew on every image (stroked glyphs take several times longer to render).
    """
    ascent_descent = face.getbbox("Ag")
    line_height = int(ascent_descent[3]) + line_spacing_px + 2 * stroke_px
    width = max((text_width(text, face) for text, _ in lines), default=0) + 2 * stroke_px + 2
    height = max(line_height * len(lines), 1)
    image = Image.new("RGBA", (max(width, 1), height), background_rgba)
    draw = ImageDraw.Draw(image)
    for index, (text, color) in enumerate(lines):
        x = stroke_px + 1
        if align_right:
            x = width - text_width(text, face) - stroke_px - 1
        if stroke_px:
            draw.text(
                (x, index * line_height), text, font=face, fill=(*color, UINT8_MAX),
                stroke_width=stroke_px, stroke_fill=(*TEXT_STROKE_RGB, UINT8_MAX),
            )
        else:
            draw.text((x, index * line_height), text, font=face, fill=(*color, UINT8_MAX))
    return _stamp_of(image)


def legend_stamp(
    entries: Sequence[tuple[str, RGB]],
    face: Font,
    *,
    heat_title: str | None,
    text_rgb: RGB = (255, 255, 255),
) -> Stamp:
    """A translucent box with a colour swatch per entry and, when ``heat_title`` is given, a
    colour bar of the heat LUT from 0 to 1."""
    pad = max(3, int(face.size) // 3) if isinstance(face, ImageFont.FreeTypeFont) else 3
    line_height = int(face.getbbox("Ag")[3]) + pad
    swatch_w = line_height
    labels = [label for label, _ in entries] + ([heat_title] if heat_title else [])
    width = 3 * pad + swatch_w + max(text_width(label, face) for label in labels)
    bar_h = max(4, line_height // 2)
    rows = len(entries) + (2 if heat_title else 0)
    height = 2 * pad + rows * line_height + (bar_h if heat_title else 0)
    image = Image.new("RGBA", (width, height), STAMP_BACKGROUND_RGBA)
    draw = ImageDraw.Draw(image)
    y = pad
    for label, color in entries:
        mid = y + line_height // 2
        draw.line([(pad, mid), (pad + swatch_w, mid)], fill=(*color, UINT8_MAX), width=3)
        draw.text((2 * pad + swatch_w, y), label, font=face, fill=(*text_rgb, UINT8_MAX))
        y += line_height
    if heat_title:
        draw.text((pad, y), heat_title, font=face, fill=(*text_rgb, UINT8_MAX))
        y += line_height
        bar_w = width - 2 * pad
        ramp = HEAT_LUT[np.linspace(0, HEAT_LUT_SIZE - 1, bar_w).round().astype(np.intp)]
        bar = np.concatenate(
            [np.repeat(ramp[None], bar_h, axis=0), np.full((bar_h, bar_w, 1), UINT8_MAX, np.uint8)],
            axis=2,
        )
        image.paste(Image.fromarray(bar), (pad, y))
        y += bar_h
        draw.text((pad, y), "0", font=face, fill=(*text_rgb, UINT8_MAX))
        one_w = text_width("1", face)
        draw.text((width - pad - one_w, y), "1", font=face, fill=(*text_rgb, UINT8_MAX))
    return _stamp_of(image)


def orientation_label(vector_lps: npt.ArrayLike, min_share: float = 0.3) -> str:
    """Patient-direction letters (L/R, P/A, H/F) of an LPS direction, strongest first.

    PS3.3 C.7.6.1.1.1: +x is L, +y is P, +z is H; oblique directions get several letters.
    """
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    vector = np.asarray(vector_lps, dtype=np.float64).reshape(3)
    components = [(abs(float(v)), axis, float(v)) for axis, v in enumerate(vector)]
    chosen = sorted((c for c in components if c[0] >= min_share), reverse=True)
    return "".join(letters[axis][1 if value > 0 else 0] for _, axis, value in chosen)


def downscale(rgb: RgbImage, max_side_px: int) -> RgbImage:
    """``rgb`` shrunk (keeping its aspect) so its longer side is at most ``max_side_px``."""
    rows, cols = rgb.shape[:2]
    factor = max_side_px / max(rows, cols)
    if factor >= 1.0:
        return rgb
    size = (max(1, round(cols * factor)), max(1, round(rows * factor)))
    image = Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()
