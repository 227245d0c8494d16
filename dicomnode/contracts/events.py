"""The kinds of events on a study's timeline (``events.kind``; the values are stored).

Operators' audited actions are stored as ``action-<name>`` by ``dicomnode.db.audit``; every
other event is one of these kinds.
"""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    # receiving
    STUDY_RECEIVED = "study-received"
    SERIES_RECEIVED = "series-received"
    INSTANCE_CONFLICT = "instance-conflict"  # a SOP Instance UID sent again with other content
    # choosing the series
    SERIES_SKIPPED = "series-skipped"
    NO_SERIES = "no-series"
    WAITING = "waiting"  # for missing instance numbers
    INCOMPLETE = "incomplete"  # analysed without them after the wait
    UNCHANGED = "unchanged"  # same input as an earlier job: not processed again
    STUDY_COMPLETE = "study-complete"
    COUNTS_MATCHED = "counts-matched"  # the source's instance counts say the study is complete
    COUNTS_UNAVAILABLE = "counts-unavailable"  # ... could not be asked; the quiet period decides
    # jobs
    JOB_QUEUED = "job-queued"
    JOB_STARTED = "job-started"
    RESULTS_HANDED_OFF = "results-handed-off"  # SEG and SR queued for export, overlay to come
    JOB_DONE = "job-done"
    JOB_RETRY = "job-retry"
    JOB_FAILED = "job-failed"
    JOB_REQUEUED = "job-requeued"
    # exports
    EXPORTED = "exported"
    EXPORT_RETRY = "export-retry"
    EXPORT_FAILED = "export-failed"
    EXPORT_REQUEUED = "export-requeued"
    EXPORT_COMMITTED = "export-committed"  # the destination confirmed it holds the objects
    EXPORT_UNCONFIRMED = "export-unconfirmed"  # sent, but the destination never confirmed it
    EXPORT_LOST = "export-lost"  # the destination does not hold a sent object: sent again
    OUTPUT_CHOICE = "output-choice"  # a refused SOP class: the overlay series goes instead
