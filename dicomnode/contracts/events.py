"""The kinds of events on a study's timeline (``events.kind``; the values are stored)."""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    # receiving
    STUDY_RECEIVED = "study-received"
    SERIES_RECEIVED = "series-received"
    # choosing the series
    SERIES_SKIPPED = "series-skipped"
    NO_SERIES = "no-series"
    WAITING = "waiting"  # for missing instance numbers
    INCOMPLETE = "incomplete"  # analysed without them after the wait
    UNCHANGED = "unchanged"  # same input as an earlier job: not processed again
    STUDY_COMPLETE = "study-complete"
    # jobs
    JOB_QUEUED = "job-queued"
    JOB_STARTED = "job-started"
    JOB_DONE = "job-done"
    JOB_RETRY = "job-retry"
    JOB_FAILED = "job-failed"
    JOB_REQUEUED = "job-requeued"
    # exports
    EXPORTED = "exported"
    EXPORT_RETRY = "export-retry"
    EXPORT_FAILED = "export-failed"
    EXPORT_REQUEUED = "export-requeued"
