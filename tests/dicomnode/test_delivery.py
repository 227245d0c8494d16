"""The exporter against Orthanc as the real PACS: isolation of destinations, SEG and SR before
the overlay, storage commitment and read-back, a lost object sent again."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select

from dicomnode.config import Destination
from dicomnode.db.confirmations import ConfirmationLog
from dicomnode.db.exports import ExportLog
from dicomnode.db.models import Event, Export, ResultObject
from dicomnode.db.records import InstanceRecorder
from dicomnode.delivering.commitment import CommitmentTracker
from dicomnode.delivering.exporter import Exporter
from dicomnode.receiving.scp import start_receiver
from tests.peers.orthanc import OrthancPeer

from .results_factory import add_results, deliver


class SilentPeer:
    """Accepts TCP connections and never answers: a hung PACS."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture()
def orthanc(tmp_path, settings) -> Iterator[OrthancPeer]:
    node = ("CHESTCT", "127.0.0.1", settings.node.port)
    with OrthancPeer(tmp_path / "orthanc", modalities={"node": node}, stop_grace_s=1.0) as peer:
        yield peer


def pacs_destination(peer: OrthancPeer, **options) -> Destination:
    return Destination("pacs", peer.aet, peer.host, peer.dicom_port, **options)


def exporter_for(settings, sessions, storage, destinations, tracker=None, **export) -> Exporter:
    options = {"backoff_initial_s": 0.2, "dimse_timeout_s": 5.0, "confirm_after_s": 0.2,
               "poll_interval_s": 0.1, **export}
    s = replace(settings.export, **options)
    return Exporter(ExportLog(sessions), destinations, s, data_dir=storage.root,
                    calling_ae_title="CHESTCT", confirmations=ConfirmationLog(sessions),
                    commitments=tracker)


def states(sessions, destination: str = "pacs") -> dict[str, str]:
    with sessions() as session:
        rows = session.execute(
            select(ResultObject.sop_instance_uid, Export.state)
            .join(Export, Export.result_object_id == ResultObject.id)
            .where(Export.destination == destination)
        )
        return {uid: state.value for uid, state in rows}


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s} s")


def run_in_thread(exporter: Exporter) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.slow
def test_hung_destination_does_not_delay_orthanc(settings, sessions, storage, queued_job,
                                                 orthanc) -> None:
    hung = SilentPeer()
    kinds = ["OVERLAY"] * 20 + ["SEG", "SR"]
    uids = add_results(sessions, storage.root, queued_job, kinds, ["hung", "pacs"])
    exporter = exporter_for(settings, sessions, storage, [
        Destination("hung", "HUNG", "127.0.0.1", hung.port, confirm="none"),
        pacs_destination(orthanc, confirm="none", max_associations=2),
    ], dimse_timeout_s=30)  # the hung peer holds its sender 30 s per association
    stop, thread = run_in_thread(exporter)
    try:
        started = time.monotonic()
        wait_until(lambda: set(states(sessions).values()) == {"sent"}, 20, "all sent to Orthanc")
        elapsed = time.monotonic() - started
        held = {i.sop_instance_uid for i in orthanc.instances_of_study("1.2.826.0.1.1")}
        assert held == set(uids)
        assert set(states(sessions, "hung").values()) == {"pending"}  # still waiting on it
        assert elapsed < 20, f"the healthy destination waited {elapsed:.1f} s"
    finally:
        stop.set()
        hung.close()
        thread.join(timeout=40)
    with sessions() as session:
        sent = {r.kind: e.sent_at for e, r in session.execute(
            select(Export, ResultObject).join(ResultObject).where(Export.destination == "pacs")
            .order_by(Export.sent_at))}
        first_overlay = min(e.sent_at for e, r in session.execute(
            select(Export, ResultObject).join(ResultObject)
            .where(Export.destination == "pacs", ResultObject.kind == "OVERLAY")))
    assert sent["SEG"] <= first_overlay and sent["SR"] <= first_overlay


@pytest.mark.slow
def test_storage_commitment_by_orthanc_and_a_lost_object_sent_again(
        settings, sessions, storage, queued_job, orthanc) -> None:
    tracker = CommitmentTracker()
    server = start_receiver(settings.node, storage, InstanceRecorder(sessions),
                            commitment_reports=tracker.on_event_report)
    uids = add_results(sessions, storage.root, queued_job, ["SEG", "SR", "OVERLAY"], ["pacs"])
    exporter = exporter_for(settings, sessions, storage, [pacs_destination(orthanc)], tracker,
                            verify_interval_s=1.0)
    stop, thread = run_in_thread(exporter)
    try:
        wait_until(lambda: set(states(sessions).values()) == {"committed"}, 20, "committed")
        with sessions() as session:
            messages = session.scalars(select(Event.message)
                                       .where(Event.kind == "export-committed")).all()
        assert any("storage commitment" in m for m in messages), messages
        (lost,) = [i for i in orthanc.instances_of_study("1.2.826.0.1.1")
                   if i.sop_instance_uid == uids[0]]
        orthanc.request("DELETE", f"/instances/{lost.orthanc_id}")
        wait_until(lambda: any(i.sop_instance_uid == uids[0]
                               for i in orthanc.instances_of_study("1.2.826.0.1.1")),
                   20, "the lost SEG sent again")
        with sessions() as session:
            kinds = session.scalars(select(Event.kind)).all()
        assert "export-lost" in kinds
        wait_until(lambda: set(states(sessions).values()) == {"committed"}, 20, "committed again")
    finally:
        stop.set()
        thread.join(timeout=30)
        server.shutdown()


@pytest.mark.slow
def test_read_back_query_confirms_without_commitment(settings, sessions, storage, queued_job,
                                                     orthanc) -> None:
    add_results(sessions, storage.root, queued_job, ["SEG", "OVERLAY", "OVERLAY"], ["pacs"])
    exporter = exporter_for(settings, sessions, storage, [pacs_destination(orthanc,
                                                                           confirm="query")])
    assert deliver(exporter, 1) == 1  # the SEG first; the overlay waits for it
    assert deliver(exporter, 2) == 2
    time.sleep(0.3)
    exporter.run_once()
    assert set(states(sessions).values()) == {"committed"}
    with sessions() as session:
        messages = session.scalars(select(Event.message)
                                   .where(Event.kind == "export-committed")).all()
    assert messages and all("read-back query" in m for m in messages)


@pytest.mark.slow
def test_status_and_metrics_tell_sent_from_committed(tmp_path, settings, sessions, storage,
                                                     queued_job, orthanc) -> None:
    import subprocess
    import sys

    from dicomnode.web.metrics import JobTimings, render

    add_results(sessions, storage.root, queued_job, ["SEG", "SR"], ["pacs"])
    exporter = exporter_for(settings, sessions, storage, [pacs_destination(orthanc,
                                                                           confirm="query")],
                            confirm_after_s=30.0)
    assert deliver(exporter, 2) == 2  # sent; not yet confirmed
    with sessions() as session:
        sent_only = exports_by_state(render(session, JobTimings(), None))
    assert (sent_only["sent"], sent_only["committed"]) == (2, 0)
    with sessions() as session, session.begin():
        for export in session.scalars(select(Export)):
            export.check_at = export.sent_at  # due now
    exporter.run_once()
    with sessions() as session:
        committed = exports_by_state(render(session, JobTimings(), None))
    assert (committed["sent"], committed["committed"]) == (0, 2)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{settings.node.data_dir}"\n')
    status = subprocess.run([sys.executable, "-m", "dicomnode", "status", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=120)
    assert "exports committed/sent/pending/failed" in status.stdout
    assert " 2/0/0/0 " in status.stdout, status.stdout


def exports_by_state(exposition: bytes) -> dict[str, float]:
    """``dicomnode_exports`` by state, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
        if sample.name == "dicomnode_exports"
    }


def test_objects_for_a_removed_destination_fail_visibly(settings, sessions, storage,
                                                       queued_job) -> None:
    add_results(sessions, storage.root, queued_job, ["SEG"], ["gone"])
    exporter = exporter_for(settings, sessions, storage, [])
    assert exporter.run_once() == 0
    with sessions() as session:
        (export,) = session.scalars(select(Export)).all()
    assert export.state.value == "failed" and "no longer configured" in export.last_error
