"""Jobs run by remote performers: the node's side of UPS-RS claim, heartbeat, results, completion.

A remote performer claims a workitem with a Transaction UID; from then on it holds the job's
lease as owner ``ups:<Transaction UID>`` and the node treats it as it treats a local worker
(``dicomnode.jobs.worker``): the same ``JobQueue`` heartbeat, the same ``complete`` (results
recorded and exports queued in one transaction, only while the lease is held) and the same
``fail``. Results arrive by STOW-RS before completion and wait in ``outbox/job-N/remote/``
named by SOP Instance UID, so a re-delivery replaces a file and never adds a second object;
a new claim clears what an earlier holder left there. Updates (progress, the summary, a
failure reason) are kept next to them in ``report.json`` until the final state change.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.contracts import ResultFile, ResultKind
from dicomnode.db.models import Job, JobState, ResultObject, Study, utcnow
from dicomnode.db.queue import JobQueue
from dicomnode.db.workitems import find_job, held_by, remote_owner, ups_state
from dicomnode.receiving.storage import Storage, is_valid_uid
from dicomnode.remote.workitem import Report

log = logging.getLogger(__name__)

REMOTE_DIR = "remote"
REPORT_FILE = "report.json"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
# STOW-RS failure reasons (PS3.18 table 10.5.3-2 uses the DIMSE status codes).
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000


class WorkitemNotFoundError(LookupError):
    """No workitem with this UID on this node (HTTP 404)."""


class WorkitemConflictError(RuntimeError):
    """The request does not fit the workitem's state or transaction (HTTP 409)."""


def result_kind(sop_class_uid: str) -> ResultKind:
    if sop_class_uid == SEG_CLASS:
        return ResultKind.SEG
    if sop_class_uid.startswith(SR_CLASS_PREFIX):
        return ResultKind.SR
    return ResultKind.OVERLAY


@dataclass(frozen=True)
class StoredResult:
    """One STOW-RS part: stored, or refused with a failure reason."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    why: str = ""


class RemoteJobs:
    """The transitions a remote performer asks for; raises the two errors above when refused."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], storage: Storage
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._storage = storage
        self.queue = JobQueue.configured(sessions, settings.worker)

    def results_dir(self, job_id: int) -> Path:
        return self._storage.outbox_dir(job_id) / REMOTE_DIR

    # ------------------------------------------------------------------ state changes
    def claim(self, uid: str, transaction_uid: str) -> int:
        """SCHEDULED -> IN PROGRESS for this transaction; returns the job id."""
        owner = remote_owner(transaction_uid)
        with self._sessions() as session:
            job = find_job(session, uid)
            if job is None:
                raise WorkitemNotFoundError(uid)
            job_id = job.id
        ticket = self.queue.claim(owner, self._settings.worker.lease_s, only=job_id)
        if ticket is None:
            with self._sessions() as session:
                job = session.get_one(Job, job_id)
                if job.state == JobState.RUNNING and job.lease_owner == owner:
                    raise WorkitemConflictError("the workitem is already IN PROGRESS for this "
                                           "transaction; keep it alive with Update Workitem")
                raise WorkitemConflictError(f"the workitem is {ups_state(job, utcnow())}, not "
                                       "SCHEDULED: it cannot be claimed")
        self._discard_partial(job_id)
        log.info("job %d claimed by remote transaction %s (attempt %d)",
                 job_id, transaction_uid, ticket.attempt)
        return job_id

    def _held(self, uid: str, transaction_uid: str) -> Job:
        with self._sessions() as session:
            job = find_job(session, uid)
            if job is None:
                raise WorkitemNotFoundError(uid)
            if job.state == JobState.RUNNING and job.lease_owner == remote_owner(transaction_uid):
                return job
            state = ups_state(job, utcnow())
        if state == "IN PROGRESS":
            raise WorkitemConflictError("the Transaction UID does not match: another performer "
                                   "holds this workitem")
        if state == "SCHEDULED":
            raise WorkitemConflictError("the workitem is SCHEDULED: this transaction no longer "
                                   "holds it (lease expired or never claimed)")
        raise WorkitemConflictError(f"the workitem is already {state}")

    def update(self, uid: str, transaction_uid: str, report: Report) -> None:
        """Update Workitem: extends the lease (the heartbeat) and keeps reason and summary."""
        job = self._held(uid, transaction_uid)
        owner = remote_owner(transaction_uid)
        if not self.queue.heartbeat(job.id, owner, self._settings.worker.lease_s):
            raise WorkitemConflictError("the lease was lost to another performer")
        if report.reason or report.summary_json or not report.retry:
            self._save_report(job.id, transaction_uid, report)

    def complete(self, uid: str, transaction_uid: str) -> int:
        """IN PROGRESS -> COMPLETED: record the stored results exactly as a local worker does."""
        job = self._held(uid, transaction_uid)
        results = self._collect(job.id)
        report = self._load_report(job.id, transaction_uid)
        summary: dict[str, Any] = {}
        if report is not None and report.summary_json:
            try:
                loaded = json.loads(report.summary_json)
                summary = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                log.warning("job %d: the performer's summary is not JSON; not kept", job.id)
        summary.setdefault("performer", "remote")
        destinations = [(d.name, d.objects) for d in self._settings.destinations]
        if not self.queue.complete(
            job.id, remote_owner(transaction_uid), results, summary, destinations
        ):
            raise WorkitemConflictError("the lease was lost before completion; results discarded")
        log.info("job %d completed by remote transaction %s: %d result objects",
                 job.id, transaction_uid, len(results))
        return len(results)

    def cancel(self, uid: str, transaction_uid: str) -> JobState:
        """IN PROGRESS -> CANCELED: the job fails, or is scheduled again while attempts remain."""
        job = self._held(uid, transaction_uid)
        report = self._load_report(job.id, transaction_uid)
        reason = (report.reason if report else "") or "the remote performer gave up"
        retry = report.retry if report else True
        state = self.queue.fail(
            job.id, remote_owner(transaction_uid), f"remote: {reason}", retry=retry
        )
        self._discard_partial(job.id)
        log.warning("job %d cancelled by remote transaction %s (now %s)",
                    job.id, transaction_uid, state.value)
        return state

    def _discard_partial(self, job_id: int) -> None:
        """Remove what an unfinished remote attempt stored; results of a job that completed
        before (an operator's re-run) are recorded and may still be exported: kept."""
        if not self.queue.has_results(job_id):
            shutil.rmtree(self.results_dir(job_id), ignore_errors=True)

    # ------------------------------------------------------------------ reports
    def _save_report(self, job_id: int, transaction_uid: str, report: Report) -> None:
        old = self._load_report(job_id, transaction_uid)
        merged = {
            "transaction": transaction_uid,
            "reason": report.reason or (old.reason if old else ""),
            "retry": report.retry and (old.retry if old else True),
            "summary": report.summary_json or (old.summary_json if old else ""),
        }
        folder = self.results_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        self._storage.write_atomic(folder / REPORT_FILE, [json.dumps(merged).encode()])

    def _load_report(self, job_id: int, transaction_uid: str) -> Report | None:
        try:
            raw = json.loads((self.results_dir(job_id) / REPORT_FILE).read_text())
        except (OSError, ValueError):
            return None
        if raw.get("transaction") != transaction_uid:
            return None
        return Report(None, str(raw.get("reason", "")), bool(raw.get("retry", True)),
                      str(raw.get("summary", "")))

    # ------------------------------------------------------------------ results
    def _collect(self, job_id: int) -> list[ResultFile]:
        results = []
        for path in sorted(self.results_dir(job_id).glob("*.dcm")):
            ds = dcmread(path, stop_before_pixels=True)
            sop_class = str(ds.SOPClassUID)
            results.append(ResultFile(
                path=Path(self._storage.relative(path)),
                kind=result_kind(sop_class),
                sop_class_uid=sop_class,
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
            ))
        return results

    def holder(self, transaction_uid: str) -> tuple[int, str]:
        """(job id, study UID) of the job this transaction holds; WorkitemConflictError if none."""
        with self._sessions() as session:
            job = held_by(session, transaction_uid)
            if job is None:
                raise WorkitemConflictError("this Transaction UID holds no workitem IN PROGRESS: "
                                       "results are accepted only from the current performer")
            study = session.get_one(Study, job.study_id)
            return job.id, study.study_instance_uid

    def store(self, transaction_uid: str, job_id: int, study_uid: str, tmp: Path) -> StoredResult:
        """Check one received file and move it into the job's results; never raises for a
        bad file (the part is refused with a reason)."""
        try:
            ds = dcmread(tmp, stop_before_pixels=True)
            sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            series_uid, its_study = str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            return StoredResult("", "", CANNOT_UNDERSTAND, f"not a DICOM file: {exc}"[:200])
        refused = self._refusal(job_id, study_uid, sop_uid, series_uid, its_study)
        if refused:
            tmp.unlink(missing_ok=True)
            return StoredResult(sop_class, sop_uid, PROCESSING_FAILURE, refused)
        folder = self.results_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder / f"{sop_uid}.dcm")
        if self._storage.fsync:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return StoredResult(sop_class, sop_uid)

    def _refusal(
        self, job_id: int, study_uid: str, sop_uid: str, series_uid: str, its_study: str
    ) -> str:
        if not all(is_valid_uid(u) for u in (sop_uid, series_uid, its_study)):
            return "an instance UID is not a valid UID"
        if its_study != study_uid:
            return "the instance belongs to another study than the workitem's"
        with self._sessions() as session:
            other = session.scalar(
                select(ResultObject.job_id).where(ResultObject.sop_instance_uid == sop_uid)
            )
        if other is not None and other != job_id:
            return "the SOP Instance UID is a result of another job"
        return ""
