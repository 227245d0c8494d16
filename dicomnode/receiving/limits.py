"""Pixel Data checked against the image's own dimensions, before anything allocates pixels.

Rows x Columns x Samples per Pixel x Bits Allocated x Number of Frames is what a reader will
allocate to decode an instance. It must stay under the node's limit (whatever the transfer
syntax), and for a native (uncompressed) transfer syntax the Pixel Data that arrived must be at
least that long: a data set cut short in transit is refused, not acknowledged.
"""

from __future__ import annotations

from pydicom import Dataset

from dicomnode.receiving.headers import int_value, is_empty, text_value
from dicomnode.receiving.scan import syntax_of
from dicomnode.receiving.statuses import StoreStatus

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _count(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """The element's integer value; ``default`` when absent or empty, None when malformed."""
    value = int_value(ds, keyword)
    if value is not None:
        return value
    return default if is_empty(ds, keyword) else None


def decoded_pixel_bytes(ds: Dataset) -> int | None:
    """Bytes a reader allocates for the decoded pixels; None if a dimension is missing or bad."""
    rows, columns = _count(ds, "Rows"), _count(ds, "Columns")
    bits = _count(ds, "BitsAllocated")
    samples, frames = _count(ds, "SamplesPerPixel", 1), _count(ds, "NumberOfFrames", 1)
    dims = (rows, columns, bits, samples, frames)
    if any(d is None or d < 1 for d in dims):
        return None
    total_bits = rows * columns * bits * samples * frames  # type: ignore[operator]
    if text_value(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        total_bits = total_bits * 2 // 3  # chroma shared by two pixels
    return (total_bits + 7) // 8


def describe(ds: Dataset) -> str:
    parts = [str(ds.get(k, "?")) for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")]
    return "x".join(parts) + f"x{ds.get('NumberOfFrames', 1)}"


def pixel_problem(
    ds: Dataset, transfer_syntax: str, max_bytes: int
) -> tuple[StoreStatus, str] | None:
    """Why this instance's pixels cannot be accepted, or None (also for no pixels at all)."""
    keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        return None
    expected = decoded_pixel_bytes(ds)
    if expected is None:
        return StoreStatus.CANNOT_UNDERSTAND, "pixel data without valid image dimensions"
    if expected > max_bytes:
        return (
            StoreStatus.INSTANCE_TOO_LARGE,
            f"{describe(ds)} pixels need {expected} bytes, over the limit",
        )
    if syntax_of(transfer_syntax).encapsulated:
        return None
    elem = ds[keyword]
    held = len(elem.value) if elem.value is not None else 0
    if held < expected:
        return (
            StoreStatus.CANNOT_UNDERSTAND,
            f"{keyword} holds {held} bytes, {describe(ds)} needs {expected}",
        )
    return None
