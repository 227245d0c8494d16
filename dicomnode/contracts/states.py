"""States of series, jobs and exports. The values are what the database stores: never change
one without a migration."""

from __future__ import annotations

import enum


class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"  # quiet period passed
    SELECTED = "selected"  # chosen for analysis
    SKIPPED = "skipped"  # not analysed; skip_reason says why


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ExportState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"  # the C-STORE/STOW response said success; not yet confirmed
    COMMITTED = "committed"  # the PACS confirmed it holds the object (commitment or read-back)
    FAILED = "failed"
    REFUSED = "refused"  # the destination does not take this SOP class; the overlay replaces it
