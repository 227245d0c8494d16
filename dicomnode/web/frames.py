"""Pixel data out of stored files for WADO-RS: frames (PS3.18 §8.7.3.4), bulk data values and
whole instances re-encoded as Explicit VR Little Endian when a client asks for that.

A frame keeps its stored encoding when the client accepts it (``transfer-syntax=*``, what OHIF
asks for), so compressed frames travel compressed and are decoded in the browser; otherwise it
is decoded here (pylibjpeg, pyjpegls or GDCM through pydicom) to little-endian native bytes.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode.web.dicomjson import find_element

NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


class FrameError(ValueError):
    """The instance has no pixel data or no such frame."""


class StoredFileError(OSError):
    """The stored file is not readable DICOM (truncated, corrupt): an OSError, so the WADO
    handlers answer it as an unreadable file with a message, not as a crash."""


_DECODE_ERRORS = (InvalidDicomError, ValueError, KeyError, AttributeError, TypeError,
                  IndexError, EOFError, struct.error, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class Frame:
    data: bytes
    transfer_syntax_uid: str


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _decoded(ds: Dataset, index: int) -> bytes:
    """Frame ``index`` (0-based) decoded to native little-endian bytes (1-bit data packed)."""
    arr = pixel_array(ds, index=index, raw=True)
    if int(ds.BitsAllocated) == 1:
        return np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes()
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def read_frames(path: Path, numbers: Sequence[int], *, keep_encoding: bool) -> list[Frame]:
    """Frames ``numbers`` (1-based) of the file at ``path``.

    With ``keep_encoding`` a compressed frame is returned as stored with its transfer syntax;
    otherwise, and for uncompressed data, as Explicit VR Little Endian native bytes.
    FrameError for a missing frame, StoredFileError when the file cannot be decoded.
    """
    try:
        return _read_frames(path, numbers, keep_encoding=keep_encoding)
    except FrameError:
        raise
    except _DECODE_ERRORS as exc:
        raise StoredFileError(
            f"the stored file cannot be decoded ({type(exc).__name__})") from exc


def _read_frames(path: Path, numbers: Sequence[int], *, keep_encoding: bool) -> list[Frame]:
    ds = dcmread(path)
    if "PixelData" not in ds:
        raise FrameError("the instance has no pixel data")
    count = frame_count(ds)
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise FrameError(f"frame(s) {bad} out of range 1..{count}")
    transfer_syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if transfer_syntax.is_encapsulated:
        if keep_encoding:
            encoded = list(generate_frames(ds.PixelData, number_of_frames=count))
            return [Frame(encoded[n - 1], str(transfer_syntax)) for n in numbers]
        return [Frame(_decoded(ds, n - 1), ExplicitVRLittleEndian) for n in numbers]
    bits = int(ds.BitsAllocated)
    if transfer_syntax in NATIVE_LITTLE_ENDIAN and bits % 8 == 0:
        length = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        pixels: bytes = ds.PixelData
        return [
            Frame(pixels[(n - 1) * length:n * length], ExplicitVRLittleEndian) for n in numbers
        ]
    return [Frame(_decoded(ds, n - 1), ExplicitVRLittleEndian) for n in numbers]


def read_bulk(path: Path, tag: int) -> tuple[bytes, str]:
    """The value of the element ``tag`` (top level first, then inside sequences) and the file's
    transfer syntax; KeyError when the file has no such element."""
    ds = dcmread(path)
    elem = find_element(ds, tag)
    if elem is None or elem.value is None:
        raise KeyError(f"no element {tag:08X}")
    value = elem.value
    if not isinstance(value, bytes):
        raise KeyError(f"element {tag:08X} is not binary")
    return value, str(ds.file_meta.TransferSyntaxUID)


def explicit_little_endian(path: Path) -> bytes:
    """The file re-encoded as Explicit VR Little Endian (compressed pixel data decoded; the
    SOP Instance UID is kept: the pixel values are unchanged for the lossless syntaxes)."""
    ds = dcmread(path)
    transfer_syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if transfer_syntax.is_encapsulated and "PixelData" in ds:
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()
