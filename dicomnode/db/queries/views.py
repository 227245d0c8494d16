"""The records the read queries return: plain frozen dataclasses, no session attached."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dicomnode.db.models import ExportState, JobState


@dataclass(frozen=True)
class SeriesView:
    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    state: str
    reason: str  # why the series was skipped or chosen
    instance_count: int
    last_received_at: datetime


@dataclass(frozen=True)
class ExportView:
    export_id: int
    job_id: int
    study_instance_uid: str
    kind: str
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str
    sent_at: datetime | None


@dataclass(frozen=True)
class ResultView:
    result_id: int
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    created_at: datetime
    exports: tuple[ExportView, ...]


@dataclass(frozen=True)
class JobView:
    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    state: str
    attempts: int
    instance_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str
    error: str
    summary: dict[str, Any] | None
    results: tuple[ResultView, ...]


@dataclass(frozen=True)
class EventView:
    event_id: int
    at: datetime
    kind: str
    message: str
    job_id: int | None


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    accession_number: str
    first_received_at: datetime
    last_received_at: datetime
    status: str  # receiving, complete, skipped, queued, running, done, failed
    series_count: int
    instance_count: int
    skipped_series: int
    last_job_id: int | None
    last_job_state: str
    exports: dict[str, int]  # export state -> count over the study's jobs


@dataclass(frozen=True)
class StudyDetail:
    study: StudySummary
    evaluated_at: datetime | None
    series: tuple[SeriesView, ...]
    jobs: tuple[JobView, ...]
    events: tuple[EventView, ...]


@dataclass(frozen=True)
class FailedExportGroup:
    """The failed exports of one job to one destination (the dashboard lists these)."""

    study_instance_uid: str
    job_id: int
    destination: str
    count: int
    kinds: tuple[tuple[str, int], ...]  # (result kind, failed exports)
    max_attempts: int
    last_status: int | None  # of the newest failed export
    last_error: str


def zero_states(states: type[JobState] | type[ExportState]) -> dict[str, int]:
    """Every state of ``states`` with a count of 0."""
    return {s.value: 0 for s in states}
