"""Rows of received instances committed in the background, in groups, by one writer thread.

The receiver acknowledges an instance once its file is synced in the spool (the durable record
of what was acknowledged) and hands its row to this writer. Rows waiting here are visible to the
receiver's duplicate check (``pending``); they are committed within ``max_delay_s`` of arrival
in groups (one transaction for all rows that arrived together). If the process dies first, the
start-up re-index of the spool (``dicomnode.receiving.recovery``) records them.

When the database fails, the writer keeps its rows and retries with a growing pause; meanwhile
``check`` refuses new instances (nothing is written that could not be indexed), and so does a
backlog over ``max_pending`` rows that does not drain within ``backlog_wait_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from dicomnode.db.records import InstanceRecord, InstanceRecorder

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0


class RowWriterUnavailableError(Exception):
    """New rows cannot be taken now: the database fails (the message says how, no patient data)."""


class RowBacklogFullError(RowWriterUnavailableError):
    """More rows wait for the database than ``max_pending``, and they did not drain in time."""


@dataclass
class _Stats:
    committed: int = 0
    groups: int = 0


class RowWriter:
    """One background thread committing ``InstanceRecord`` rows through an ``InstanceRecorder``."""

    def __init__(
        self, recorder: InstanceRecorder, *, max_pending: int = 5000,
        max_delay_s: float = 0.01, backlog_wait_s: float = 10.0,
    ) -> None:
        self.recorder = recorder
        self.max_pending = max_pending
        self.max_delay_s = max_delay_s
        self.backlog_wait_s = backlog_wait_s
        self.stats = _Stats()
        self._cond = threading.Condition()
        self._queue: list[InstanceRecord] = []
        self._pending: dict[str, InstanceRecord] = {}  # queued or being committed
        self._failure: str = ""
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="row-writer", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise ``RowWriterUnavailableError`` if a new row could not be taken now."""
        with self._cond:
            if self._failure:
                raise RowWriterUnavailableError(f"database unavailable ({self._failure})")
            if len(self._pending) >= self.max_pending:
                deadline = time.monotonic() + self.backlog_wait_s
                while len(self._pending) >= self.max_pending and not self._failure:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RowBacklogFullError(
                            f"{len(self._pending)} rows waiting for the database")
                    self._cond.wait(left)

    def submit(self, rec: InstanceRecord) -> None:
        """Queue a row (its file is already synced); it is committed within ``max_delay_s``."""
        with self._cond:
            if self._closing:
                raise RowWriterUnavailableError("the receiver is stopping")
            self._queue.append(rec)
            self._pending[rec.sop_instance_uid] = rec
            self._cond.notify_all()

    def pending(self, sop_instance_uid: str) -> InstanceRecord | None:
        with self._cond:
            return self._pending.get(sop_instance_uid)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every row queued so far is committed (through retries); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            waiting = set(self._pending)
            while waiting & self._pending.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, then stop the thread."""
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _take(self) -> list[InstanceRecord]:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            group, self._queue = self._queue, []
            return group

    def _run(self) -> None:
        pause = RETRY_INITIAL_S
        while True:
            group = self._take()
            if not group:
                return  # closing, nothing left
            if self.max_delay_s > 0:
                time.sleep(self.max_delay_s)  # let rows arriving meanwhile share the commit
                with self._cond:
                    group += self._queue
                    self._queue = []
            while True:
                errors = self._commit(group)
                if not errors:
                    pause = RETRY_INITIAL_S
                    break
                group = errors
                time.sleep(pause)
                pause = min(RETRY_MAX_S, pause * 2)

    def _commit(self, group: list[InstanceRecord]) -> list[InstanceRecord]:
        """Commit a group; the rows that failed (to retry)."""
        try:
            errors = self.recorder.record_group(group)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the rows for a retry
            errors = [exc] * len(group)
        failed = [rec for rec, err in zip(group, errors, strict=True) if err is not None]
        first = next((err for err in errors if err is not None), None)
        with self._cond:
            for rec, err in zip(group, errors, strict=True):
                if err is None and self._pending.get(rec.sop_instance_uid) is rec:
                    del self._pending[rec.sop_instance_uid]
            if first is not None and not self._failure:
                log.error("%d received instance row(s) not committed, retrying: %s",
                          len(failed), type(first).__name__)
            elif first is None and self._failure:
                log.warning("database available again; pending instance rows committed")
            self._failure = type(first).__name__ if first is not None else ""
            self.stats.committed += len(group) - len(failed)
            self.stats.groups += 1
            self._cond.notify_all()
        return failed
