"""Bounded input against the real receiver: sizes, pixel lengths, conflicts, malformed commands.

Raw data sets are built byte by byte and streamed by pynetdicom's SCU from a file (chunked send:
no decoding on the sender side) or sent by dcmtk's storescu.
"""

from __future__ import annotations

import copy
import resource
import struct
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from sqlalchemy import func, select

from dicomnode.config import NodeSettings, Settings
from dicomnode.db.models import Event, Instance
from dicomnode.db.records import InstanceRecorder
from dicomnode.receiving.scp import start_receiver
from dicomnode.receiving.statuses import StoreStatus
from tests.peers.dcmtk import storescu

from .conftest import ct_dataset, ct_series, wait_for_instances

LIMIT_MB = 8


@pytest.fixture()
def limited(settings: Settings, storage, sessions) -> Iterator[NodeSettings]:
    node = replace(settings.node, max_instance_mb=LIMIT_MB)
    server = start_receiver(node, storage, InstanceRecorder(sessions))
    yield node
    server.shutdown()


def _header(rows: int, columns: int) -> Dataset:
    ds = ct_dataset(generate_uid(prefix=None), generate_uid(prefix=None), 0)
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    return ds


def _pixel_element(declared: int) -> bytes:
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, declared)


def _write_raw(path: Path, header: Dataset, syntax: str, body: Iterator[bytes]) -> Path:
    """Preamble, file meta, the header elements, then ``body`` as it comes (no checks)."""
    header.file_meta.TransferSyntaxUID = syntax
    buf = DicomBytesIO()
    buf.write(bytes(128) + b"DICM")
    write_file_meta_info(buf, header.file_meta, enforce_standard=True)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
        for chunk in body:
            fh.write(chunk)
    return path


def _encoded(header: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False  # explicit VR little endian
    write_dataset(buf, header)
    return buf.getvalue()


def _send_file(node: NodeSettings, path: Path, syntax: str, monkeypatch) -> Dataset:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_deflate_bomb_is_refused_with_bounded_memory(limited, sessions, tmp_path,
                                                     monkeypatch) -> None:
    inflated = 160 * 1024 * 1024  # 20x the limit; 160 MiB of zeros deflate to about 160 KiB
    header = _header(8192, 8192)  # Rows x Columns agree with the length: only the size is wrong
    header.BitsAllocated = 16

    def body() -> Iterator[bytes]:
        z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        yield z.compress(_encoded(header) + _pixel_element(inflated))
        zeros = bytes(4 * 1024 * 1024)
        for _ in range(inflated // len(zeros)):
            yield z.compress(zeros)
        yield z.flush()

    path = _write_raw(tmp_path / "bomb.dcm", header, DeflatedExplicitVRLittleEndian, body())
    assert path.stat().st_size < 2 * 1024 * 1024
    before = _max_rss_mb()
    status = _send_file(limited, path, DeflatedExplicitVRLittleEndian, monkeypatch)
    growth = _max_rss_mb() - before
    assert status.Status == StoreStatus.INSTANCE_TOO_LARGE
    assert "inflated" in status.ErrorComment
    assert growth < 64, f"receiving the bomb grew the process by {growth:.0f} MB"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


def test_oversized_native_data_set_is_refused_and_association_stays_usable(
    limited, sessions, tmp_path, monkeypatch
) -> None:
    header = _header(2048, 2048)
    header.NumberOfFrames = 2  # 16 MiB of pixels, over the 8 MB limit
    pixels = 2048 * 2048 * 2 * 2

    def body() -> Iterator[bytes]:
        yield _encoded(header) + _pixel_element(pixels)
        yield bytes(pixels)

    path = _write_raw(tmp_path / "big.dcm", header, ExplicitVRLittleEndian, body())
    status = _send_file(limited, path, ExplicitVRLittleEndian, monkeypatch)
    assert status.Status == StoreStatus.INSTANCE_TOO_LARGE
    assert f"{LIMIT_MB} MB" in status.ErrorComment


def test_truncated_pixel_data_is_refused(limited, sessions, tmp_path, monkeypatch) -> None:
    """Pixel Data claims 512 KiB, 1000 bytes follow."""
    header = _header(512, 512)

    def body() -> Iterator[bytes]:
        yield _encoded(header) + _pixel_element(512 * 1024) + bytes(1000)

    path = _write_raw(tmp_path / "cut.dcm", header, ExplicitVRLittleEndian, body())
    status = _send_file(limited, path, ExplicitVRLittleEndian, monkeypatch)
    assert status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert status.ErrorComment
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


def test_absurd_dimensions_refused_before_any_pixels_are_read(limited, tmp_path) -> None:
    """Rows x Columns x Frames far over the limit, a few bytes of pixels, sent by storescu."""
    ds = ct_dataset(generate_uid(prefix=None), generate_uid(prefix=None), 0)
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 40000  # about 320 TiB decoded
    ds.PixelData = bytes(512)
    path = tmp_path / "absurd.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = storescu([path], limited.host, limited.port, limited.ae_title, "TESTSCU", ["-v"])
    output = result.stdout + result.stderr
    assert "Refused: OutOfResources" in output, output[-1500:]


def test_identical_resend_succeeds_conflicting_one_is_refused_and_logged(receiver, sessions):
    original = ct_series(1)[0]
    same = copy.deepcopy(original)
    other_study = copy.deepcopy(original)
    other_study.StudyInstanceUID = generate_uid(prefix=None)
    other_pixels = copy.deepcopy(original)
    other_pixels.PixelData = bytes(len(original.PixelData))
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(receiver.host, receiver.port, ae_title=receiver.ae_title)
    statuses = [assoc.send_c_store(ds) for ds in (original, same, other_study, other_pixels)]
    assoc.release()
    assert [int(s.Status) for s in statuses] == [0, 0, StoreStatus.UID_CONFLICT,
                                                 StoreStatus.UID_CONFLICT]
    assert "another study" in statuses[2].ErrorComment
    wait_for_instances(sessions, 1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
        conflicts = session.scalars(select(Event).where(Event.kind == "instance-conflict")).all()
        assert len(conflicts) == 2
        assert all(original.SOPInstanceUID in e.message for e in conflicts)
        assert all(e.study_id is not None for e in conflicts)


@pytest.mark.parametrize(
    "uid", ["", "1.2." + "3" * 80, "not-a-uid", "1.2.03.4"], ids=["empty", "overlong", "text",
                                                              "leading-zero"]
)
def test_malformed_affected_sop_instance_uid_answered_at_once(receiver, uid) -> None:
    import time

    ds = ct_series(1)[0]
    ds.SOPInstanceUID = uid
    ae = AE(ae_title="TESTSCU")
    ae.dimse_timeout = 10
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(receiver.host, receiver.port, ae_title=receiver.ae_title)
    started = time.monotonic()
    status = assoc.send_c_store(ds)
    elapsed = time.monotonic() - started
    follow_up = assoc.send_c_store(ct_series(1)[0])
    assoc.release()
    assert int(status.Status) == StoreStatus.INVALID_SOP_INSTANCE_UID
    assert elapsed < 5
    assert int(follow_up.Status) == 0, "the association stays usable"


def test_pipeline_refuses_absurd_dimensions_before_allocating() -> None:
    from pipeline.series import SeriesError, _check_size

    slices = ct_series(2)
    for ds in slices:
        ds.Rows = ds.Columns = 60000  # the header alone; 2 x 60000^2 float32 would be 29 GB
    with pytest.raises(SeriesError, match="exceed the supported size"):
        _check_size(slices)


def test_four_associations_at_once_share_commits_and_lose_nothing(receiver, sessions) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from dicomnode.db.models import Series

    series = [ct_series(12) for _ in range(4)]

    def send(datasets: list[Dataset]) -> list[int]:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(receiver.host, receiver.port, ae_title=receiver.ae_title)
        try:
            return [int(assoc.send_c_store(ds).Status) for ds in datasets]
        finally:
            assoc.release()

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(send, series))
    assert statuses == [[0] * 12] * 4
    wait_for_instances(sessions, 48)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 48
        assert sorted(session.scalars(select(Series.instance_count))) == [12, 12, 12, 12]


def test_group_commit_batch_records_each_row_once(sessions) -> None:
    """The batch path (rows queued while another commit ran): new study and series created
    once, a duplicate inside the batch reported as not inserted, counts right."""
    from dicomnode.db.models import Series
    from dicomnode.db.records import _Pending
    from dicomnode.receiving.headers import instance_record

    datasets = ct_series(3)
    recs = [
        instance_record(ds, sop_class_uid=CTImageStorage,
                        transfer_syntax_uid=ExplicitVRLittleEndian, path=f"spool/{i}.dcm",
                        size_bytes=1)
        for i, ds in enumerate(datasets)
    ]
    recorder = InstanceRecorder(sessions)
    batch = [_Pending(r) for r in (*recs, recs[0])]
    recorder._commit(batch)
    assert [(p.done, p.inserted, p.error) for p in batch] == [
        (True, True, None), (True, True, None), (True, True, None), (True, False, None)
    ]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 3
        assert session.scalars(select(Series.instance_count)).all() == [3]
        kinds = session.scalars(select(Event.kind)).all()
        assert kinds.count("study-received") == 1 and kinds.count("series-received") == 1
