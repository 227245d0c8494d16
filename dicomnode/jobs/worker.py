"""The worker: claim a job, run the processor, record results, queue exports.

The processor hands the SEG and SR over as soon as they are written (``ProcessRequest.handoff``):
their rows and exports are committed then, so the exporter sends them while the overlay series
is rendered; the overlay objects are recorded with the job's completion.

Runs in its own process (``dicomnode worker`` or a child of ``dicomnode serve``), never in the
receiver. The processor, and with it the models, is loaded once per process. While a job runs
a heartbeat thread extends its lease; if the process dies the lease expires and another worker
(or this one after a restart) claims the job again with the same result UIDs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.contracts import ProcessRequest, ResultFile, ResultKind, is_retryable
from dicomnode.db.leases import release_dead_local_leases
from dicomnode.db.queue import JobQueue, JobTicket
from dicomnode.errors import safe_message
from dicomnode.jobs.processing import Processor
from dicomnode.receiving.storage import Storage

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: Storage,
        processor: Processor,
        owner: str | None = None,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._processor = processor
        self._queue = JobQueue.configured(sessions, settings.worker)
        self._sessions = sessions
        self.owner = owner or worker_id()

    def recover(self) -> int:
        """Free jobs held by dead processes of this host, so a restart resumes them at once."""
        return release_dead_local_leases(self._sessions, socket.gethostname())

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue had nothing runnable."""
        ticket = self._queue.claim(self.owner, self._settings.worker.lease_s)
        if ticket is None:
            return False
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(ticket.job_id, stop), daemon=True)
        beat.start()
        started = time.monotonic()
        try:
            self._run(ticket)
        except Exception as exc:
            retry = is_retryable(exc)
            message = safe_message(exc)
            self._discard_partial_outbox(ticket.job_id)
            state = self._queue.fail(ticket.job_id, self.owner, message, retry=retry)
            # No traceback: its frames' text may quote a value of the data set.
            log.error(
                "job %d (series %s) failed on attempt %d: %s (now %s)",
                ticket.job_id, ticket.series_instance_uid, ticket.attempt, message, state.value,
            )
        else:
            log.info(
                "job %d (series %s) done in %.1f s",
                ticket.job_id, ticket.series_instance_uid, time.monotonic() - started,
            )
        finally:
            stop.set()
            beat.join()
        return True

    def _run(self, ticket: JobTicket) -> None:
        out_dir = self._storage.outbox_dir(ticket.job_id)
        prior = self._queue.prior_reports(ticket.study_id, ticket.job_id)
        destinations = [(d.name, d.objects) for d in self._settings.destinations]
        handed_off: list[ResultFile] = []

        def handoff(objects: Sequence[ResultFile]) -> None:
            """SEG and SR are written: queue their export before the overlay is rendered."""
            results = [self._stored(obj, out_dir) for obj in objects]
            if results and self._queue.hand_off(ticket.job_id, self.owner, results,
                                                destinations):
                handed_off.extend(results)
                log.info("job %d: %d structured results handed to the exporter",
                         ticket.job_id, len(results))

        request = ProcessRequest(
            job_id=ticket.job_id,
            files=tuple(self._storage.absolute(f) for f in ticket.files),
            out_dir=out_dir,
            uid_root=ticket.uid_root,
            predecessors=tuple(prior),
            handoff=handoff,
        )
        outcome = self._processor.process(request)
        results = [self._stored(obj, out_dir) for obj in outcome.objects]
        self._queue.complete(
            ticket.job_id, self.owner, results, dict(outcome.summary), destinations,
            handed_off=handed_off,
        )

    def _stored(self, obj: ResultFile, out_dir: Path) -> ResultFile:
        """The processor's record with its path relative to the data directory."""
        path = Path(obj.path)
        if not path.is_absolute():
            path = out_dir / path
        return ResultFile(
            path=Path(self._storage.relative(path)),
            kind=ResultKind(obj.kind),
            sop_class_uid=obj.sop_class_uid,
            sop_instance_uid=obj.sop_instance_uid,
            series_instance_uid=obj.series_instance_uid,
        )

    def _discard_partial_outbox(self, job_id: int) -> None:
        """Remove what a failed attempt wrote (a full disk stays full otherwise); the outbox
        of a job that completed before (an operator's re-run) holds objects still exported."""
        if self._queue.has_results(job_id):
            return
        folder = self._storage.outbox_dir(job_id)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("job %d: partial outbox removed", job_id)

    def _heartbeat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self._settings.worker.heartbeat_s):
            try:
                if not self._queue.heartbeat(job_id, self.owner, self._settings.worker.lease_s):
                    log.warning("job %d: lease lost to another worker", job_id)
                    return
            except Exception:
                log.exception("job %d: heartbeat failed", job_id)

    def run(self, stop: threading.Event) -> None:
        self.recover()
        log.info("worker %s waiting for jobs", self.owner)
        while not stop.is_set():
            try:
                worked = self.run_once()
            except Exception:
                log.exception("worker round failed")
                worked = False
            if not worked:
                stop.wait(self._settings.worker.poll_interval_s)
