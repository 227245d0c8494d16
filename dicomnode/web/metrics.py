"""``/metrics`` in the Prometheus text exposition format (version 0.0.4), written here.

Totals come from the database on each scrape. Stage and job durations are histograms fed
incrementally from finished jobs (``jobs.summary["timings_s"]`` and started/finished times):
each scrape reads only the jobs finished since the previous one, so a re-run job counts as a
further observation. After a restart the histograms are rebuilt from the table (a counter
reset, which Prometheus handles).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from dicomnode import __version__
from dicomnode.db.models import utcnow
from dicomnode.db.queries import counts as count_queries
from dicomnode.review.gauges import validation_exposition
from dicomnode.web.context import get_ctx, get_session

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
JOB_BUCKETS_S = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
MAX_STAGES = 32  # distinct stage labels kept; more would be a label explosion
_STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")
EXPORT_ATTEMPT_FAILURE_EVENTS = ("export-retry", "export-failed")
JOB_EVENTS = ("job-retry", "job-failed")

router = APIRouter(tags=["operations"])


@dataclass
class Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class JobTimings:
    """Histograms of stage and job durations, fed from jobs finished since the last update."""

    def __init__(self) -> None:
        self.stages: dict[str, Histogram] = {}
        self.jobs = Histogram(JOB_BUCKETS_S)
        self._watermark: datetime | None = None
        self._seen_at_watermark: set[int] = set()
        self._lock = threading.Lock()

    def update(self, session: Session) -> None:
        with self._lock:
            while True:
                rows = count_queries.jobs_finished_since(session, self._watermark)
                fresh = [r for r in rows if not self._seen(r)]
                for row in fresh:
                    self._observe(row)
                    if row.finished_at != self._watermark:
                        self._watermark = row.finished_at
                        self._seen_at_watermark = set()
                    self._seen_at_watermark.add(row.job_id)
                if not fresh:
                    return

    def _seen(self, row: count_queries.FinishedJob) -> bool:
        return row.finished_at == self._watermark and row.job_id in self._seen_at_watermark

    def _observe(self, row: count_queries.FinishedJob) -> None:
        if row.started_at is not None:
            self.jobs.observe(max(0.0, (row.finished_at - row.started_at).total_seconds()))
        timings = (row.summary or {}).get("timings_s") or {}
        if not isinstance(timings, dict):
            return
        for stage, seconds in timings.items():
            if not isinstance(seconds, int | float) or not math.isfinite(seconds):
                continue
            name = str(stage)
            if not _STAGE_NAME_RE.match(name):
                continue
            hist = self.stages.get(name)
            if hist is None:
                if len(self.stages) >= MAX_STAGES:
                    continue
                hist = self.stages[name] = Histogram(STAGE_BUCKETS_S)
            hist.observe(float(seconds))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class Exposition:
    """Builds the text format: one HELP and TYPE line per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self.lines.append(f"{name}{_labels(labels or {})} {_number(value)}")

    def simple(
        self, name: str, kind: str, help_text: str, value: float,
    ) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def by_label(
        self, name: str, kind: str, help_text: str, label: str, values: dict[str, int]
    ) -> None:
        self.family(name, kind, help_text)
        for key, value in sorted(values.items()):
            self.sample(name, value, {label: key})

    def histograms(
        self, name: str, help_text: str, series: Iterable[tuple[dict[str, str], Histogram]]
    ) -> None:
        self.family(name, "histogram", help_text)
        for labels, hist in series:
            for bound, count in zip(hist.buckets, hist.counts, strict=True):
                self.sample(f"{name}_bucket", count, {**labels, "le": repr(float(bound))})
            self.sample(f"{name}_bucket", hist.count, {**labels, "le": "+Inf"})
            self.sample(f"{name}_sum", hist.total, labels)
            self.sample(f"{name}_count", hist.count, labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _epoch_s(value: datetime) -> float:
    return value.replace(tzinfo=UTC).timestamp()


def render(session: Session, timings: JobTimings, receiver_up: bool | None) -> str:
    """The whole exposition for one scrape."""
    totals = count_queries.totals(session)
    events = count_queries.event_counts(session, EXPORT_ATTEMPT_FAILURE_EVENTS + JOB_EVENTS)
    timings.update(session)
    out = Exposition()
    out.family("dicomnode_info", "gauge", "The node's software version.")
    out.sample("dicomnode_info", 1, {"version": __version__})
    if receiver_up is not None:
        out.simple("dicomnode_receiver_up", "gauge",
                   "1 while the DICOM receiver is listening.", int(receiver_up))
    out.simple("dicomnode_instances_received_total", "counter",
               "Instances received and stored.", totals["instances"])
    out.simple("dicomnode_studies", "gauge", "Studies known to the node.", totals["studies"])
    out.simple("dicomnode_series", "gauge", "Series known to the node.", totals["series"])
    out.by_label("dicomnode_jobs", "gauge", "Jobs by state.", "state", totals["jobs"])
    out.by_label("dicomnode_exports", "gauge", "Exports (one per result object and "
                 "destination) by state.", "state", totals["exports"])
    out.simple("dicomnode_export_failures_total", "counter",
               "Exports that failed for good after their last attempt.", events["export-failed"])
    out.simple("dicomnode_export_attempt_failures_total", "counter",
               "Failed export attempts, retried or final.",
               events["export-retry"] + events["export-failed"])
    out.simple("dicomnode_job_failures_total", "counter",
               "Jobs that failed for good.", events["job-failed"])
    out.simple("dicomnode_job_retries_total", "counter",
               "Job attempts that failed and were queued again.", events["job-retry"])
    oldest = count_queries.oldest_queued_job_created_at(session)
    out.simple("dicomnode_oldest_queued_job_age_seconds", "gauge",
               "Age of the oldest queued job (0 when none waits).",
               max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0)
    last = count_queries.last_instance_received_at(session)
    if last is not None:
        out.simple("dicomnode_last_instance_received_timestamp_seconds", "gauge",
                   "When the newest instance was received (Unix time).", _epoch_s(last))
    out.histograms("dicomnode_stage_seconds",
                   "Duration of each pipeline stage of finished jobs (summary timings_s).",
                   [({"stage": k}, h) for k, h in sorted(timings.stages.items())])
    out.histograms("dicomnode_job_seconds",
                   "Duration of finished jobs, from the start of their last attempt.",
                   [({}, timings.jobs)])
    return out.text()


@router.get("/metrics")
def metrics(request: Request, session: Annotated[Session, Depends(get_session)]) -> Response:
    ctx = get_ctx(request)
    alive = ctx.receiver_alive() if ctx.receiver_alive is not None else None
    text = render(session, request.app.state.job_timings, alive) + validation_exposition(session)
    return Response(text, media_type=CONTENT_TYPE)
