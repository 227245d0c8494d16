"""``/metrics`` in the Prometheus text exposition format (version 0.0.4), through a
``prometheus_client`` custom collector.

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy.orm import Session

from dicomnode import __version__
from dicomnode.contracts import EventKind
from dicomnode.db.ai_verdict import verdict_counts
from dicomnode.db.models import utcnow
from dicomnode.db.queries import counts as count_queries
from dicomnode.review.gauges import validation_metrics
from dicomnode.web.context import get_ctx, get_session

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
STAGE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
JOB_BUCKETS_S = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
MAX_STAGES = 32  # distinct stage labels kept; more would be a label explosion
_STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")
EXPORT_ATTEMPT_FAILURE_EVENTS = (EventKind.EXPORT_RETRY, EventKind.EXPORT_FAILED)
JOB_EVENTS = (EventKind.JOB_RETRY, EventKind.JOB_FAILED)

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


def _epoch_s(value: datetime) -> float:
    return value.replace(tzinfo=UTC).timestamp()


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _by_state(name: str, help_text: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=["state"])
    for state, count in sorted(values.items()):
        family.add_metric([state], count)
    return family


def _histogram(
    name: str, help_text: str, label: str | None, series: Iterable[tuple[str, Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=[label] if label else None)
    for value, hist in series:
        buckets = [
            (floatToGoString(bound), float(count))
            for bound, count in zip(hist.buckets, hist.counts, strict=True)
        ]
        buckets.append(("+Inf", float(hist.count)))
        family.add_metric([value] if label else [], buckets, hist.total)
    return family


class NodeCollector(Collector):
    """The node's metrics for one scrape, read from the database through ``session``.

    A custom collector rather than live counters: the numbers live in the database, shared by
    every process of the node, so each scrape reads them instead of this process counting.
    """

    def __init__(self, session: Session, timings: JobTimings, receiver_up: bool | None) -> None:
        self._session = session
        self._timings = timings
        self._receiver_up = receiver_up

    def collect(self) -> Iterator[Metric]:
        session = self._session
        totals = count_queries.totals(session)
        events = count_queries.event_counts(session, EXPORT_ATTEMPT_FAILURE_EVENTS + JOB_EVENTS)
        self._timings.update(session)
        info = GaugeMetricFamily("dicomnode_info", "The node's software version.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        if self._receiver_up is not None:
            yield _gauge("dicomnode_receiver_up", "1 while the DICOM receiver is listening.",
                         int(self._receiver_up))
        yield _counter("dicomnode_instances_received", "Instances received and stored.",
                       totals["instances"])
        yield _gauge("dicomnode_studies", "Studies known to the node.", totals["studies"])
        yield _gauge("dicomnode_series", "Series known to the node.", totals["series"])
        yield _by_state("dicomnode_jobs", "Jobs by state.", totals["jobs"])
        yield _by_state("dicomnode_exports", "Exports (one per result object and destination) "
                        "by state.", totals["exports"])
        failed, retried = events[EventKind.EXPORT_FAILED], events[EventKind.EXPORT_RETRY]
        yield _counter("dicomnode_export_failures",
                       "Exports that failed for good after their last attempt.", failed)
        yield _counter("dicomnode_export_attempt_failures",
                       "Failed export attempts, retried or final.", retried + failed)
        yield _counter("dicomnode_job_failures", "Jobs that failed for good.",
                       events[EventKind.JOB_FAILED])
        yield _counter("dicomnode_job_retries", "Job attempts that failed and were queued again.",
                       events[EventKind.JOB_RETRY])
        oldest = count_queries.oldest_queued_job_created_at(session)
        yield _gauge("dicomnode_oldest_queued_job_age_seconds",
                     "Age of the oldest queued job (0 when none waits).",
                     max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0)
        last = count_queries.last_instance_received_at(session)
        if last is not None:
            yield _gauge("dicomnode_last_instance_received_timestamp_seconds",
                         "When the newest instance was received (Unix time).", _epoch_s(last))
        yield _histogram("dicomnode_stage_seconds",
                         "Duration of each pipeline stage of finished jobs (summary timings_s).",
                         "stage", sorted(self._timings.stages.items()))
        yield _histogram("dicomnode_job_seconds",
                         "Duration of finished jobs, from the start of their last attempt.",
                         None, [("", self._timings.jobs)])
        verdicts = GaugeMetricFamily("dicomnode_verdicts",
                                     "Done jobs by the classifier's verdict call (summary "
                                     "verdict; jobs without one are not counted).",
                                     labels=["call"])
        for call, count in verdict_counts(session).items():
            verdicts.add_metric([call], count)
        yield verdicts
        yield from validation_metrics(session)


def render(session: Session, timings: JobTimings, receiver_up: bool | None) -> bytes:
    """The whole exposition for one scrape (text format 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(session, timings, receiver_up))
    return generate_latest(registry)


@router.get("/metrics")
def metrics(request: Request, session: Annotated[Session, Depends(get_session)]) -> Response:
    ctx = get_ctx(request)
    alive = ctx.receiver_alive() if ctx.receiver_alive is not None else None
    return Response(render(session, request.app.state.job_timings, alive),
                    media_type=CONTENT_TYPE)
