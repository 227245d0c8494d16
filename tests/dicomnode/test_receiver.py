"""The receiver against a real pynetdicom SCU on loopback: statuses, durability, dedup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicomnode.config import NodeSettings
from dicomnode.db.models import Event, Instance, Series
from dicomnode.receiving.statuses import StoreStatus

from .conftest import ct_dataset, ct_series, wait_for_instances


def _assoc(node: NodeSettings, *, calling: str = "TESTSCU", called: str | None = None,
           syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for ts in syntaxes:
        ae.add_requested_context(CTImageStorage, ts)
    return ae.associate(node.host, node.port, ae_title=called or node.ae_title)


def _store(node: NodeSettings, datasets: list[Dataset], **kw) -> list[Dataset]:
    assoc = _assoc(node, **kw)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def test_echo(receiver: NodeSettings) -> None:
    assoc = _assoc(receiver)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_store_is_durable_and_recorded(receiver, sessions, settings) -> None:
    series = ct_series(3)
    statuses = _store(receiver, series)
    assert [s.Status for s in statuses] == [0, 0, 0]
    wait_for_instances(sessions, 3)
    with sessions() as session:
        rows = session.scalars(select(Instance).order_by(Instance.instance_number)).all()
        assert [r.sop_instance_uid for r in rows] == [ds.SOPInstanceUID for ds in series]
        for row, ds in zip(rows, series, strict=True):
            stored = dcmread(settings.node.data_dir / row.path)
            assert stored.SOPInstanceUID == ds.SOPInstanceUID
            assert stored.PixelData == ds.PixelData
            assert row.image_position == "-100.0\\-100.0\\" + str(ds.ImagePositionPatient[2])
        assert session.scalar(select(Series.instance_count)) == 3
        kinds = session.scalars(select(Event.kind)).all()
        assert kinds.count("study-received") == 1 and kinds.count("series-received") == 1
    assert not any((settings.node.data_dir / "tmp").iterdir()), "no partial files left"


def test_same_instance_twice_is_stored_once(receiver, sessions) -> None:
    ds = ct_series(1)[0]
    assert [s.Status for s in _store(receiver, [ds, ds])] == [0, 0]
    assert [s.Status for s in _store(receiver, [ds])] == [0]
    wait_for_instances(sessions, 1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
        assert session.scalar(select(Series.instance_count)) == 1


@pytest.mark.parametrize(
    ("attribute", "value", "status"),
    [
        ("StudyInstanceUID", "896911bf-1143-4c8d-8f04-f3cd1a7f6204", 0xC221),  # bare UUID
        ("SeriesInstanceUID", "", 0xC221),
        ("SeriesInstanceUID", "1.2.3/../../../../etc", 0xC221),
        ("StudyInstanceUID", "..", 0xC221),
    ],
)
def test_malformed_instances_get_a_precise_status(
    receiver, sessions, settings, attribute, value, status, caplog
) -> None:
    good = ct_series(2)
    bad = good[0].copy()
    setattr(bad, attribute, value)
    results = _store(receiver, [bad, good[1]])
    assert results[0].Status == status
    assert results[0].ErrorComment  # the reason travels back to the sender
    assert results[1].Status == 0, "the association and node stay usable"
    wait_for_instances(sessions, 1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
    spool = settings.node.data_dir / "spool"
    assert all(Path(p).resolve().is_relative_to(spool.resolve()) for p in spool.rglob("*"))
    assert not (settings.node.data_dir.parent / "etc").exists()
    assert any("refused instance" in r.getMessage() for r in caplog.records)


def test_sop_instance_uid_mismatch_refused(receiver) -> None:
    ds = ct_series(1)[0]
    assoc = _assoc(receiver)
    # The request's Affected SOP Instance UID comes from the data set; corrupt the data set
    # afterwards by sending a copy whose UID differs from the file meta the SCU uses.
    ds.SOPInstanceUID = "1.2.3.4.5..6"  # malformed
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == StoreStatus.INVALID_SOP_INSTANCE_UID


def test_sop_class_mismatch_gives_a900(storage, sessions) -> None:
    """A data set whose SOP Class differs from the request's (pynetdicom's SCU cannot send
    one, so the handler is called with the event fields it reads)."""
    from io import BytesIO
    from types import SimpleNamespace

    from pynetdicom.dsutils import encode

    from dicomnode.db.records import InstanceRecorder
    from dicomnode.db.row_writer import RowWriter
    from dicomnode.receiving.handlers import StoreService

    ds = ct_series(1)[0]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage inside a CT request
    event = SimpleNamespace(
        request=SimpleNamespace(
            AffectedSOPInstanceUID=ds.SOPInstanceUID, AffectedSOPClassUID=CTImageStorage,
            DataSet=BytesIO(encode(ds, False, True)),
        ),
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="TESTSCU")),
        context=SimpleNamespace(transfer_syntax="1.2.840.10008.1.2.1"),
    )
    recorder = InstanceRecorder(sessions)
    service = StoreService(storage, recorder, 2**40, RowWriter(recorder))
    status = service.handle_event(event)  # type: ignore[arg-type]
    service.close()
    assert status.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOPClassUID" in status.ErrorComment


def test_disk_reserve_gives_out_of_resources(settings, sessions) -> None:
    from dicomnode.db.records import InstanceRecorder
    from dicomnode.receiving.scp import start_receiver
    from dicomnode.receiving.storage import Storage

    full = Storage(settings.node.data_dir, min_free_mb=10**9)  # more than any disk has
    server = start_receiver(settings.node, full, InstanceRecorder(sessions))
    try:
        (status,) = _store(settings.node, ct_series(1))
        assert status.Status == 0xA700
    finally:
        server.shutdown()


def test_enospc_gives_out_of_resources(settings, sessions, monkeypatch) -> None:
    import errno

    from dicomnode.db.records import InstanceRecorder
    from dicomnode.receiving import storage as storage_mod
    from dicomnode.receiving.scp import start_receiver

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    store = storage_mod.Storage(settings.node.data_dir, min_free_mb=0)
    # with delayed allocation a full disk shows up when the data is synced
    monkeypatch.setattr(storage_mod.os, "fdatasync", no_space)
    server = start_receiver(settings.node, store, InstanceRecorder(sessions))
    try:
        (status,) = _store(settings.node, ct_series(1))
        assert status.Status == 0xA700
        assert not list((settings.node.data_dir / "spool").rglob("*.dcm")), "no partial file"
        assert not list((settings.node.data_dir / "tmp").iterdir())
    finally:
        server.shutdown()


def test_calling_ae_allow_list_and_called_ae_check(settings, storage, sessions) -> None:
    from dataclasses import replace

    from dicomnode.db.records import InstanceRecorder
    from dicomnode.receiving.scp import start_receiver

    node = replace(settings.node, allowed_calling_aets=("PACS",))
    server = start_receiver(node, storage, InstanceRecorder(sessions))
    try:
        assert _assoc(node, calling="INTRUDER").is_rejected
        assert _assoc(node, calling="PACS", called="SOMEONEELSE").is_rejected
        ok = _assoc(node, calling="PACS")
        assert ok.is_established
        ok.release()
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ],
)
def test_each_transfer_syntax_is_accepted_and_kept(receiver, settings, sessions, syntax) -> None:
    ds = ct_dataset(generate_uid(prefix=None), generate_uid(prefix=None), 0, size=32)
    original = ds.pixel_array.copy()
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    (status,) = _store(receiver, [ds], syntaxes=(syntax,))
    assert status.Status == 0
    wait_for_instances(sessions, 1)
    with sessions() as session:
        row = session.scalars(select(Instance)).one()
        assert row.transfer_syntax_uid == syntax
        stored = dcmread(settings.node.data_dir / row.path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert (stored.pixel_array == original).all()


def test_files_are_synced_before_success(receiver, monkeypatch) -> None:
    """Default: written in place, then one fdatasync (commits the journal on ext4/XFS)."""
    calls: list[str] = []
    real_fsync = os.fsync
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "fdatasync", lambda fd: (calls.append("fdatasync"), real_fdatasync(fd))[1]
    )
    (status,) = _store(receiver, ct_series(1))
    assert status.Status == 0
    assert calls == ["fdatasync"]


def test_strict_mode_syncs_data_then_folders(settings, monkeypatch) -> None:
    from dicomnode.receiving.storage import Storage

    store = Storage(settings.node.data_dir, sync_directories=True)
    calls: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync"))
    path = store.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    store.write_instance(path, b"abc")
    # the two new folders' parents, then the data, then the folder that got the rename
    assert calls == ["fsync", "fsync", "fdatasync", "fsync"]
    assert path.read_bytes() == b"abc"


def test_truncated_spool_file_is_quarantined(settings, storage, sessions) -> None:
    from dicomnode.db.records import InstanceRecorder
    from dicomnode.receiving.recovery import reindex_spool

    good, bad = ct_series(2, size=64)
    for ds in (good, bad):
        path = storage.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    bad_path = storage.instance_path(bad.StudyInstanceUID, bad.SeriesInstanceUID,
                                     bad.SOPInstanceUID)
    bad_path.write_bytes(bad_path.read_bytes()[:-3000])  # a crash mid-write
    # a file whose content does not match its name (killed while a buffer was half written)
    stray = storage.instance_path(good.StudyInstanceUID, good.SeriesInstanceUID, "1.2.3.4")
    other = good.copy()
    other.SOPInstanceUID = ""
    other.save_as(stray)
    assert reindex_spool(storage, InstanceRecorder(sessions)) == 1
    assert not stray.exists()
    assert not bad_path.exists()
    assert list((settings.node.data_dir / "quarantine").rglob("*.dcm"))


def test_spool_files_without_rows_are_reindexed(settings, storage, sessions) -> None:
    """After a power loss the newest rows may be gone; the fsynced files bring them back."""
    from dicomnode.db.records import InstanceRecorder
    from dicomnode.receiving.recovery import reindex_spool

    series = ct_series(3)
    for ds in series:
        path = storage.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    recorder = InstanceRecorder(sessions)
    assert reindex_spool(storage, recorder) == 3
    assert reindex_spool(storage, recorder) == 0
    with sessions() as session:
        rows = session.scalars(select(Instance)).all()
        assert {r.sop_instance_uid for r in rows} == {ds.SOPInstanceUID for ds in series}
        assert all(r.image_position for r in rows)
