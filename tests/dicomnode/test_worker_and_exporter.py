"""Worker with a small fake processor; exporter against a real pynetdicom SCP on loopback."""

from __future__ import annotations

import threading
from dataclasses import replace

from pydicom import Dataset, dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import select

from dicomnode.config import Destination
from dicomnode.contracts import (
    AnalysisError,
    ProcessOutcome,
    ProcessRequest,
    ResultFile,
    ResultKind,
)
from dicomnode.db.exports import ExportLog
from dicomnode.db.models import Export, ExportState, Job, JobState, ResultObject
from dicomnode.delivering.exporter import Exporter
from dicomnode.jobs.worker import Worker
from pipeline.errors import ModelError, SeriesError

from .conftest import both_backends, ct_series, free_port

pytestmark = both_backends


class CopyProcessor:
    """Writes one small CT instance as its 'result' with a UID derived from uid_root."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.fail_with = fail_with
        self.requests: list[ProcessRequest] = []

    def process(self, request: ProcessRequest) -> ProcessOutcome:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        ds = ct_series(1)[0]
        ds.SOPInstanceUID = request.uid_root + ".1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = request.out_dir / "result.dcm"
        ds.save_as(path, enforce_file_format=True)
        return ProcessOutcome(
            (ResultFile(path, ResultKind.SEG, str(ds.SOPClassUID), ds.SOPInstanceUID,
                        ds.SeriesInstanceUID),),
            {"files": len(request.files)},
        )


class FakePacs:
    """A real DICOM SCP that stores into memory and answers the statuses it is told to."""

    def __init__(self, statuses: list[int] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Dataset] = []
        self.statuses = list(statuses or [])
        ae = AE(ae_title="FAKEPACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        status = self.statuses.pop(0) if self.statuses else 0
        if status == 0:
            self.received.append(event.dataset)
        return status

    def destination(self, name: str = "pacs") -> Destination:
        return Destination(name, "FAKEPACS", "127.0.0.1", self.port)

    def stop(self) -> None:
        self.server.shutdown()


def test_worker_runs_job_and_queues_exports(settings, sessions, storage, queued_job) -> None:
    s = replace(settings, destinations=(Destination("pacs", "P", "127.0.0.1", 1),))
    proc = CopyProcessor()
    worker = Worker(s, sessions, storage, proc, owner="test:1")
    assert worker.run_once() and not worker.run_once()
    (request,) = proc.requests
    assert len(request.files) == 45 and request.out_dir.is_dir()
    with sessions() as session:
        job = session.get_one(Job, queued_job)
        assert job.state == JobState.DONE and job.summary == {"files": 45}
        obj = session.scalars(select(ResultObject)).one()
        assert obj.sop_instance_uid == job.uid_root + ".1"
        assert session.scalars(select(Export)).one().destination == "pacs"


def _state_after_failure(settings, sessions, storage, job_id: int, error: Exception) -> JobState:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        job.state, job.attempts, job.error, job.next_attempt_at = JobState.QUEUED, 0, "", None
        session.commit()
    Worker(settings, sessions, storage, CopyProcessor(error), "t:1").run_once()
    with sessions() as session:
        job = session.get_one(Job, job_id)
        assert str(error) in job.error
        return job.state


def test_input_errors_are_not_retried_but_crashes_are(settings, sessions, storage,
                                                      queued_job) -> None:
    """The pipeline's own errors (the real classes) fail the job for good; anything else, and
    an analysis error that says it may pass, is queued again."""

    class TransientError(AnalysisError):
        pass

    for error, state in (
        (SeriesError("no lungs"), JobState.FAILED),
        (ModelError("weights checksum mismatch"), JobState.FAILED),
        (RuntimeError("oom"), JobState.QUEUED),
        (TransientError("scratch disk full"), JobState.QUEUED),
    ):
        assert _state_after_failure(settings, sessions, storage, queued_job, error) == state, error


def _exporter(settings, sessions, storage, destinations) -> Exporter:
    export = replace(settings.export, backoff_initial_s=0.0, max_attempts=3, dimse_timeout_s=5)
    return Exporter(ExportLog(sessions), destinations, export, data_dir=storage.root,
                    calling_ae_title="CHESTCT")


def _run_job(settings, sessions, storage, destination) -> None:
    s = replace(settings, destinations=(destination,))
    Worker(s, sessions, storage, CopyProcessor(), "t:1").run_once()


def test_export_delivers_the_stored_object(settings, sessions, storage, queued_job) -> None:
    pacs = FakePacs()
    try:
        _run_job(settings, sessions, storage, pacs.destination())
        exporter = _exporter(settings, sessions, storage, [pacs.destination()])
        assert exporter.run_once() == 1
        assert exporter.run_once() == 0  # nothing left
        with sessions() as session:
            obj = session.scalars(select(ResultObject)).one()
            export = session.scalars(select(Export)).one()
            assert export.state == ExportState.SENT and export.last_status == 0
        assert [d.SOPInstanceUID for d in pacs.received] == [obj.sop_instance_uid]
        on_disk = dcmread(storage.root / obj.path)
        assert pacs.received[0].PixelData == on_disk.PixelData
    finally:
        pacs.stop()


def test_destination_down_then_up_delivers(settings, sessions, storage, queued_job) -> None:
    pacs = FakePacs()
    dest = pacs.destination()
    pacs.stop()  # the PACS is down
    _run_job(settings, sessions, storage, dest)
    exporter = _exporter(settings, sessions, storage, [dest])
    assert exporter.run_once() == 0
    with sessions() as session:
        export = session.scalars(select(Export)).one()
        assert export.state == ExportState.PENDING and export.attempts == 1
        assert "associat" in export.last_error
    pacs_up = FakePacs(port=dest.port)  # the PACS is back
    try:
        assert exporter.run_once() == 1
        assert len(pacs_up.received) == 1
    finally:
        pacs_up.stop()


def test_refusals_end_in_a_visible_failed_state(settings, sessions, storage, queued_job) -> None:
    from dicomnode.db.queries.exports import list_exports

    pacs = FakePacs(statuses=[0xA700, 0xA700, 0xA700])
    try:
        _run_job(settings, sessions, storage, pacs.destination())
        exporter = _exporter(settings, sessions, storage, [pacs.destination()])
        for _ in range(3):
            exporter.run_once()
        with sessions() as session:
            (failed,) = list_exports(session, states=[ExportState.FAILED])
        assert failed.attempts == 3 and failed.last_status == 0xA700
        assert "0xA700" in failed.last_error
        ExportLog(sessions).retry(failed.export_id)  # the operator's retry
        assert exporter.run_once() == 1
    finally:
        pacs.stop()


def test_exporter_thread_stops(settings, sessions, storage) -> None:
    exporter = _exporter(settings, sessions, storage, [])
    stop = threading.Event()
    t = threading.Thread(target=exporter.run, args=(stop,))
    t.start()
    stop.set()
    t.join(timeout=5)
    assert not t.is_alive()
