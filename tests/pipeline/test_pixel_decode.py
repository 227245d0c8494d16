"""libjpeg-turbo decodes JPEG Lossless to exactly pydicom's stored values, or steps aside."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGLosslessSV1

from pipeline import pixel_decode
from pipeline.pixel_decode import stored_pixels
from pipeline.series import ct_headers


def _jpeg_lossless_slice(stored: np.ndarray, signed: bool, bits_stored: int) -> pydicom.Dataset:
    ds = ct_headers((1, *stored.shape), (1.0, 0.7, 0.7), uid_root="pixel-decode")[0]
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelRepresentation = int(signed)
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    frame = imagecodecs.jpeg8_encode(stored.view(np.uint16), lossless=True, bitspersample=16)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def test_real_jpeg_lossless_slices_decode_to_pydicoms_values(covid_files: list[Path]) -> None:
    for path in covid_files[::15]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID in pixel_decode.FAST_SYNTAXES
        fast = pixel_decode._jpeg_lossless(ds)
        assert fast is not None, "the fast path was not taken"
        reference = pixel_array(ds)
        assert fast.dtype == reference.dtype and np.array_equal(fast, reference)


def test_signed_16_bit_slices_keep_their_sign() -> None:
    rng = np.random.default_rng(3)
    stored = rng.integers(-3000, 3000, (64, 80)).astype(np.int16)
    ds = _jpeg_lossless_slice(stored, signed=True, bits_stored=16)
    fast = pixel_decode._jpeg_lossless(ds)
    assert fast is not None and fast.dtype == np.int16
    assert np.array_equal(fast, stored) and np.array_equal(stored_pixels(ds), pixel_array(ds))


@pytest.mark.parametrize(("signed", "values"), [(True, (-2048, 2047)), (False, (0, 8000))],
                         ids=["signed-12-bit", "unsigned-past-bits-stored"])
def test_unusual_slices_are_left_to_pydicom(signed: bool, values: tuple[int, int]) -> None:
    stored = np.random.default_rng(4).integers(*values, (32, 32)).astype(np.int16)
    ds = _jpeg_lossless_slice(stored, signed=signed, bits_stored=12)
    assert pixel_decode._jpeg_lossless(ds) is None
    assert np.array_equal(stored_pixels(ds), pixel_array(ds))


def test_a_broken_frame_is_left_to_pydicom() -> None:
    ds = _jpeg_lossless_slice(np.zeros((16, 16), np.int16), signed=False, bits_stored=16)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not a frame"])
    assert pixel_decode._jpeg_lossless(ds) is None
    with pytest.raises(Exception):  # noqa: B017, PT011 - pydicom's decoder error, whichever it is
        stored_pixels(ds)
