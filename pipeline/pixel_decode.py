"""Stored pixel values of one CT slice: JPEG Lossless through libjpeg-turbo, the rest through
pydicom's decoders.

JPEG Lossless (Process 14, and its SV1 form that most CT exports use) is the costliest part of
reading a series with pydicom's plug-in (pylibjpeg-libjpeg, about 19 ms per 512 x 512 slice);
libjpeg-turbo, through ``imagecodecs``, decodes the same frame to the same values about eight
times faster. Only the common case takes that path: one frame, one sample, 16 bits allocated,
unsigned or signed with all 16 bits stored, values within Bits Stored. Anything else, or any
error, goes to pydicom, whose decoders say exactly what is wrong with a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGLossless, JPEGLosslessSV1

logger = logging.getLogger(__name__)

FAST_SYNTAXES = frozenset({JPEGLossless, JPEGLosslessSV1})

_Decoder = Callable[[bytes], npt.NDArray[np.generic]]


def _load_jpeg8() -> _Decoder | None:
    try:
        import imagecodecs
    except ImportError:  # an optional speed-up: pydicom decodes without it
        return None
    if not getattr(imagecodecs.JPEG8, "available", False):
        return None
    decoder: _Decoder = imagecodecs.jpeg8_decode
    return decoder


_JPEG8_DECODE = _load_jpeg8()


def stored_pixels(ds: Dataset) -> npt.NDArray[np.generic]:
    """The slice's stored values (before rescale), as ``pydicom.pixels.pixel_array`` gives."""
    fast = _jpeg_lossless(ds)
    return fast if fast is not None else pixel_array(ds)


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _jpeg_lossless(ds: Dataset) -> npt.NDArray[np.generic] | None:
    """libjpeg-turbo's decoding of a JPEG Lossless slice, or None where pydicom must decide."""
    if _JPEG8_DECODE is None or _transfer_syntax(ds) not in FAST_SYNTAXES:
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bits_stored = int(ds.get("BitsStored", 0) or 0)
    if (
        int(ds.get("BitsAllocated", 0) or 0) != 16
        or int(ds.get("SamplesPerPixel", 1) or 1) != 1
        or int(ds.get("NumberOfFrames", 1) or 1) != 1
        or not 1 <= bits_stored <= 16
        or (signed and bits_stored != 16)
    ):
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        out = _JPEG8_DECODE(frame)
    except Exception as exc:  # noqa: BLE001 - the fallback reports the error properly
        logger.debug("libjpeg-turbo could not decode a frame (%s); using pydicom", exc)
        return None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if out.dtype != np.uint16 or out.shape != (rows, cols):
        return None
    if signed:
        return out.view(np.int16)
    if bits_stored < 16 and int(out.max()) >> bits_stored:
        return None  # values past Bits Stored: pydicom's rules apply
    return out
