"""The receiver's direct C-STORE path: command codec, header values, background row writer."""

from __future__ import annotations

import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from dicomnode.db.models import Instance
from dicomnode.db.records import InstanceRecord, InstanceRecorder
from dicomnode.db.row_writer import RowBacklogFullError, RowWriter, RowWriterUnavailableError
from dicomnode.receiving.commands import parse_store_command, store_response_pdu
from dicomnode.receiving.headers import instance_record, int_value, text_value

from .conftest import both_backends, ct_series, wait_for_instances

REAL_SERIES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "covid-ct-md"
               / "series" / "COVID-19" / "P002")


def _command_bytes(primitive: object) -> bytes:
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)  # type: ignore[arg-type]
    pdvs = [item for p in message.encode_msg(1, 0) for item in p.presentation_data_value_list]
    return b"".join(data[1:] for _, data in pdvs if data[0] & 1)


def _store_primitive(uid: str = "1.2.826.0.1.3680043.8.498.1") -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = uid
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    return primitive


def test_store_command_read_as_pynetdicom_writes_it() -> None:
    command = parse_store_command(_command_bytes(_store_primitive()))
    assert command is not None
    assert (command.message_id, command.sop_class_uid, command.sop_instance_uid) == (
        7, CTImageStorage, "1.2.826.0.1.3680043.8.498.1")


def test_other_or_broken_commands_take_the_general_path() -> None:
    raw = _command_bytes(_store_primitive())
    assert parse_store_command(raw[:-3]) is None  # an element cut short
    assert parse_store_command(b"\x08\x00" + raw[2:]) is None  # not group 0000
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    from pynetdicom.dimse_messages import C_ECHO_RQ

    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    pdvs = [item for p in message.encode_msg(1, 0) for item in p.presentation_data_value_list]
    assert parse_store_command(b"".join(d[1:] for _, d in pdvs)) is None


@pytest.mark.parametrize(("status", "comment"), [(0x0000, ""), (0xC222, "already stored")])
def test_response_pdu_is_what_pynetdicom_reads(status: int, comment: str) -> None:
    command = parse_store_command(_command_bytes(_store_primitive("1.2.3.45")))
    assert command is not None
    pdu_bytes = store_response_pdu(3, command, status, comment)
    pdu = P_DATA_TF()
    pdu.decode(pdu_bytes)
    assert pdu.pdu_length == len(pdu_bytes) - 6
    [(context_id, data)] = pdu.to_primitive().presentation_data_value_list
    assert context_id == 3 and data[0] == 0x03  # command, last fragment
    rsp = decode(BytesIO(data[1:]), True, True)
    assert rsp.CommandGroupLength == len(data) - 1 - 12
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8001, 7, status)
    assert (rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID) == (CTImageStorage, "1.2.3.45")
    assert rsp.CommandDataSetType == 0x0101
    assert rsp.get("ErrorComment", "") == comment
    message = C_STORE_RSP()
    message.command_set = rsp
    primitive = message.message_to_primitive()
    assert primitive.Status == status


def _record_by_pydicom(path: Path) -> dict[str, object]:
    """What the header values were before the direct reads: pydicom's conversions."""
    ds = dcmread(path, stop_before_pixels=True)

    def text(k: str) -> str:
        v = ds.get(k)
        return "" if v is None else "\\".join(map(str, v)) if isinstance(v, list | tuple) or (
            hasattr(v, "__iter__") and not isinstance(v, str | bytes)) else str(v)

    return {k: text(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "Modality",
                                 "ImageType", "ImagePositionPatient", "ImageOrientationPatient",
                                 "PixelSpacing", "SeriesDescription", "BodyPartExamined")} | {
        "Rows": int(ds.Rows), "InstanceNumber": int(ds.InstanceNumber)}


def test_direct_header_reads_equal_pydicom_on_real_files() -> None:
    files = sorted(p for p in REAL_SERIES.iterdir() if p.is_file())[:5]
    assert files, f"no real series at {REAL_SERIES}"
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        expected = _record_by_pydicom(path)
        for keyword, value in expected.items():
            got = int_value(ds, keyword) if isinstance(value, int) else text_value(ds, keyword)
            assert got == value, (path.name, keyword)


def test_text_outside_ascii_is_read_by_pydicom() -> None:
    ds = ct_series(1)[0]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SeriesDescription = "Thorax nativ Lunge Größe"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    raw = BytesIO(fp.getvalue())
    decoded = decode(raw, False, True)
    assert text_value(decoded, "SeriesDescription") == "Thorax nativ Lunge Größe"
    rec = instance_record(decoded, sop_class_uid=CTImageStorage,
                          transfer_syntax_uid=ExplicitVRLittleEndian, path="x", size_bytes=1)
    assert rec.rows == ds.Rows and rec.series_number == ds.SeriesNumber


def _records(n: int) -> list[InstanceRecord]:
    return [instance_record(ds, sop_class_uid=CTImageStorage,
                            transfer_syntax_uid=ExplicitVRLittleEndian, path=f"spool/{i}.dcm",
                            size_bytes=1) for i, ds in enumerate(ct_series(n))]


def _count(sessions) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_row_writer_commits_in_groups_and_shows_pending_rows(sessions) -> None:
    recorder = InstanceRecorder(sessions)
    gate = threading.Event()
    original = recorder.record_group

    def held(recs: list[InstanceRecord]) -> list[Exception | None]:
        gate.wait(10)
        return original(recs)

    recorder.record_group = held  # type: ignore[method-assign]
    writer = RowWriter(recorder)
    recs = _records(5)
    for rec in recs:
        writer.submit(rec)
    assert writer.pending(recs[3].sop_instance_uid) is recs[3]
    assert _count(sessions) == 0
    gate.set()
    assert writer.flush(10)
    assert _count(sessions) == 5 and writer.pending(recs[3].sop_instance_uid) is None
    assert writer.stats.committed == 5 and writer.stats.groups <= 5
    writer.close()


def test_row_writer_keeps_rows_through_a_database_failure(sessions) -> None:
    recorder = InstanceRecorder(sessions)
    original = recorder.record_group
    failing = {"on": True}

    def flaky(recs: list[InstanceRecord]) -> list[Exception | None]:
        if failing["on"]:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return original(recs)

    recorder.record_group = flaky  # type: ignore[method-assign]
    writer = RowWriter(recorder)
    recs = _records(3)
    writer.submit(recs[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            writer.check()
        except RowWriterUnavailableError as exc:
            assert "OperationalError" in str(exc)
            break
        time.sleep(0.01)
    else:
        pytest.fail("the failure was not reported")
    failing["on"] = False
    assert writer.flush(10)
    writer.check()  # available again
    for rec in recs[1:]:
        writer.submit(rec)
    writer.close()
    assert _count(sessions) == 3


def test_row_writer_refuses_when_its_backlog_does_not_drain(sessions) -> None:
    recorder = InstanceRecorder(sessions)
    gate = threading.Event()
    recorder.record_group = lambda recs: (gate.wait(10), [None] * len(recs))[1]  # type: ignore
    writer = RowWriter(recorder, max_pending=2, backlog_wait_s=0.2)
    for rec in _records(2):
        writer.submit(rec)
    with pytest.raises(RowBacklogFullError):
        writer.check()
    gate.set()
    writer.close()


@both_backends
def test_receiver_stores_and_looks_up_on_both_engines(settings, storage, sessions) -> None:
    """The direct path against the real receiver on SQLite and PostgreSQL: rows arrive after
    the acknowledgement, a re-send is found by the driver-level lookup, a conflict is refused."""
    from pynetdicom import AE

    from dicomnode.receiving.scp import start_receiver

    server = start_receiver(settings.node, storage, InstanceRecorder(sessions))
    try:
        series = ct_series(3)
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert [int(assoc.send_c_store(ds).Status) for ds in series] == [0, 0, 0]
        assert int(assoc.send_c_store(series[0]).Status) == 0  # identical re-send
        other = ct_series(1)[0]
        other.SOPInstanceUID = series[1].SOPInstanceUID  # same UID, another study
        assert int(assoc.send_c_store(other).Status) == 0xC222
        assoc.release()
        wait_for_instances(sessions, 3)
        recorder = InstanceRecorder(sessions)
        found = recorder.stored(series[2].SOPInstanceUID)
        assert found is not None and found.series_instance_uid == series[2].SeriesInstanceUID
        assert recorder.stored("1.2.3.999") is None
    finally:
        server.shutdown()
    assert _count(sessions) == 3
