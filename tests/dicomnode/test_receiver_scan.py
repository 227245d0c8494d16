"""The receiver's top-level scan gives pydicom's values, steps over sequences, refuses the odd."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode

from dicomnode.receiving.headers import instance_record
from dicomnode.receiving.limits import pixel_problem
from dicomnode.receiving.scan import MAX_DEPTH, ScanError, scan_top_level

from .conftest import ct_series

REAL_SERIES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "covid-ct-md"
               / "series" / "COVID-19" / "P002")


def _encode(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _same_as_pydicom(raw: bytes, implicit: bool, syntax: str) -> Dataset:
    scanned = scan_top_level(raw, implicit)
    full = decode(BytesIO(raw), implicit, True)
    kw = {"sop_class_uid": "1.2", "transfer_syntax_uid": syntax, "path": "p", "size_bytes": 1}
    assert instance_record(scanned, **kw) == instance_record(full, **kw)
    assert scanned.PixelData == full.PixelData
    assert pixel_problem(scanned, syntax, 2**30) == pixel_problem(full, syntax, 2**30)
    return scanned


def _nested(depth: int) -> Sequence:
    item = Dataset()
    item.CodeValue = "X"
    if depth > 1:
        item.ConceptNameCodeSequence = _nested(depth - 1)
    seq = Sequence([item])
    return seq


@pytest.mark.parametrize("implicit", [False, True])
def test_real_ct_slice_scanned_as_pydicom_reads_it(implicit: bool) -> None:
    path = sorted(p for p in REAL_SERIES.iterdir() if p.is_file())[0]
    ds = dcmread(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if implicit:  # native pixels, implicit VR: what a plain modality sends
        ds.decompress()
        syntax = "1.2.840.10008.1.2"
    _same_as_pydicom(_encode(ds, implicit), implicit, syntax)


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_of_undefined_length_are_stepped_over(implicit: bool) -> None:
    ds = ct_series(1)[0]
    ds.ReferencedImageSequence = _nested(4)
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = True
    scanned = _same_as_pydicom(_encode(ds, implicit), implicit, "1.2.840.10008.1.2.1")
    assert "ReferencedImageSequence" not in scanned or implicit


@pytest.mark.parametrize("raw", [b"\x08\x00\x16\x00UI\x40\x00" + b"1.2" * 3,  # past the end
                                 b"\x08\x00\x16",  # a header cut short
                                 ])
def test_odd_data_sets_are_left_to_pydicom(raw: bytes) -> None:
    with pytest.raises(ScanError):
        scan_top_level(raw, False)


def test_nesting_is_bounded() -> None:
    ds = Dataset()
    ds.ContentSequence = _nested(MAX_DEPTH + 4)
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    with pytest.raises(ScanError):
        scan_top_level(_encode(ds, False), False)


def test_truncated_pixel_data_is_left_to_pydicom() -> None:
    """Native Pixel Data shorter than declared: the scan gives up, pydicom reads what came, and
    the receiver refuses it as before (0xC210, ``test_receiver_input``)."""
    ds = ct_series(1)[0]
    raw = _encode(ds, False)
    with pytest.raises(ScanError):
        scan_top_level(raw[:-100], False)
