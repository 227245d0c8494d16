"""The remote worker: an IHE AIW-I Task Performer over UPS-RS, WADO-RS and STOW-RS.

``dicomnode worker --node-url URL --token TOKEN`` runs this on any host: no database, no shared
files. Each round it searches SCHEDULED workitems, claims one (IN PROGRESS with a new
Transaction UID), retrieves the workitem and its series (WADO-RS) into a private scratch
folder, runs the processor loaded as the local worker loads it, stores the result objects
(STOW-RS) and sets the workitem COMPLETED. A heartbeat thread sends Update Workitem (progress)
every ``heartbeat_s`` while it works, which renews the node's lease; a performer that dies
simply stops renewing, the lease expires, the workitem is SCHEDULED again and another
performer re-runs it with the same result UIDs. On failure it sends the reason (exception
type and message without data-set values, as the local worker records it) and whether a
retry could help, then CANCELED. The scratch folder is removed after every workitem.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.uid import generate_uid

from dicomnode.contracts import PriorReport, ProcessRequest
from dicomnode.errors import safe_message
from dicomnode.jobs.processing import Processor
from dicomnode.remote.client import DicomwebClient, RemoteError
from dicomnode.remote.workitem import (
    Assignment,
    failure_update,
    output_update,
    progress_update,
    read_assignment,
)

log = logging.getLogger(__name__)

SEARCH_LIMIT = 10


@dataclass(frozen=True)
class PerformerSettings:
    heartbeat_s: float = 10.0
    poll_interval_s: float = 2.0
    work_dir: Path | None = None  # scratch folders go here (default: the system's temp folder)


class LeaseLostError(RuntimeError):
    """The provider refused an update: another performer holds the workitem now."""

    retryable = False


class _Heartbeat:
    """Update Workitem every ``interval`` s until stopped; remembers when the lease is lost."""

    def __init__(self, client: DicomwebClient, uid: str, txn: str, interval: float) -> None:
        self._client, self._uid, self._txn, self._interval = client, uid, txn, interval
        self._stop = threading.Event()
        self.lost = False
        self.percent = 5.0
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._client.update(self._uid, self._txn, progress_update(self.percent, "working"))
            except RemoteError as exc:
                if exc.status == 409:
                    log.warning("workitem %s: lease lost (%s)", self._uid, exc)
                    self.lost = True
                    return
                log.warning("workitem %s: heartbeat failed: %s", self._uid, exc)


def performer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RemotePerformer:
    def __init__(
        self,
        client: DicomwebClient,
        processor: Processor,
        settings: PerformerSettings,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._processor = processor
        self._settings = settings
        self._now = now
        self.completed = 0
        if settings.work_dir is not None:
            settings.work_dir.mkdir(parents=True, exist_ok=True)

    def claim_next(self) -> tuple[str, str] | None:
        """(workitem UID, Transaction UID) of a workitem this performer now holds, or None."""
        for item in self._client.scheduled(SEARCH_LIMIT):
            uid = str(item.get("SOPInstanceUID", ""))
            if not uid:
                continue
            txn = generate_uid()
            try:
                self._client.change_state(uid, txn, "IN PROGRESS")
            except RemoteError as exc:
                if exc.status in (404, 409):
                    continue  # another performer was faster
                raise
            log.info("claimed workitem %s (transaction %s)", uid, txn)
            return uid, txn
        return None

    def run_once(self) -> bool:
        """Claim and perform one workitem; False when none was SCHEDULED."""
        claimed = self.claim_next()
        if claimed is None:
            return False
        uid, txn = claimed
        started = time.monotonic()
        with _Heartbeat(self._client, uid, txn, self._settings.heartbeat_s) as beat:
            try:
                self._perform(uid, txn, beat)
            except Exception as exc:
                self._report_failure(uid, txn, exc, lost=beat.lost)
                return True
        self.completed += 1
        log.info("workitem %s completed in %.1f s", uid, time.monotonic() - started)
        return True

    def _perform(self, uid: str, txn: str, beat: _Heartbeat) -> None:
        assignment = read_assignment(self._client.retrieve(uid), self._client.ups_base)
        scratch = Path(tempfile.mkdtemp(prefix="workitem-", dir=self._settings.work_dir))
        try:
            files = self._client.retrieve_series(assignment.retrieve_url, scratch / "in")
            log.info("workitem %s: %d instances of series %s retrieved",
                     uid, len(files), assignment.series_instance_uid)
            beat.percent = 20.0
            outcome = self._processor.process(_request(assignment, files, scratch / "out"))
            if beat.lost:
                raise LeaseLostError("the lease was lost while the analysis ran")
            beat.percent = 90.0
            outputs = []
            paths = []
            for obj in outcome.objects:
                path = Path(obj.path)
                paths.append(path if path.is_absolute() else scratch / "out" / path)
                outputs.append((obj.series_instance_uid, obj.sop_class_uid, obj.sop_instance_uid))
            self._client.store(assignment.study_instance_uid, paths, txn)
            summary = json.dumps(dict(outcome.summary), default=str, allow_nan=False)
            self._client.update(uid, txn, output_update(
                assignment.study_instance_uid, outputs, summary))
            self._client.change_state(uid, txn, "COMPLETED")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _report_failure(self, uid: str, txn: str, exc: Exception, *, lost: bool) -> None:
        retry = bool(getattr(exc, "retryable", True))
        reason = safe_message(exc)[:1000]
        log.error("workitem %s failed: %s", uid, reason)
        if lost or isinstance(exc, LeaseLostError):
            return  # nothing to report: the workitem belongs to another performer now
        try:
            self._client.update(uid, txn, failure_update(reason, retry, self._now()))
            self._client.change_state(uid, txn, "CANCELED")
        except RemoteError as report_exc:
            log.error("workitem %s: the failure could not be reported: %s", uid, report_exc)

    def run(self, stop: threading.Event) -> None:
        log.info("remote performer %s polling %s", performer_id(), self._client.ups_base)
        while not stop.is_set():
            try:
                worked = self.run_once()
            except RemoteError as exc:
                log.warning("worklist round failed: %s", exc)
                worked = False
            except Exception:
                log.exception("worklist round failed")
                worked = False
            if not worked:
                stop.wait(self._settings.poll_interval_s)


def _request(assignment: Assignment, files: list[Path], out_dir: Path) -> ProcessRequest:
    out_dir.mkdir(parents=True, exist_ok=True)
    return ProcessRequest(
        job_id=0,
        files=tuple(files),
        out_dir=out_dir,
        uid_root=assignment.uid_root,
        predecessors=tuple(
            PriorReport(p.study_instance_uid, p.series_instance_uid, p.sop_instance_uid,
                        p.sop_class_uid)
            for p in assignment.predecessors
        ),
    )
