"""A job's result objects grouped by series for the study page.

A job writes a handful of series (SEG, two SRs, an overlay series of one image per CT slice), so
listing every object buries the few that matter. The page shows one row per series and
destination with the export states counted, and lists individually only the objects whose
export failed (each with its retry button) or is still pending.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from dicomnode.db.models import ExportState
from dicomnode.db.queries.views import ExportView, ResultView

# listed object by object
ATTENTION_STATES = (ExportState.FAILED.value, ExportState.PENDING.value, ExportState.SENDING.value,
                    ExportState.REFUSED.value)
_STATE_ORDER = tuple(s.value for s in (ExportState.COMMITTED, ExportState.SENT,
                                      ExportState.SENDING, ExportState.PENDING,
                                      ExportState.REFUSED, ExportState.FAILED))


@dataclass(frozen=True)
class DestinationTally:
    """The exports of one series' objects to one destination."""

    destination: str
    counts: tuple[tuple[str, int], ...]  # (export state, objects), in a fixed state order
    max_attempts: int
    last_sent_at: datetime | None
    attention: tuple[tuple[ResultView, ExportView], ...]  # failed or not yet sent, by object

    @property
    def failed(self) -> int:
        return dict(self.counts).get(ExportState.FAILED.value, 0)


@dataclass(frozen=True)
class ResultSeriesGroup:
    """The result objects of one series of a job, with their exports per destination."""

    kind: str
    series_instance_uid: str
    objects: tuple[ResultView, ...]
    destinations: tuple[DestinationTally, ...]

    @property
    def single(self) -> ResultView | None:
        """The object itself when the series holds exactly one."""
        return self.objects[0] if len(self.objects) == 1 else None


def _state_rank(state: str) -> int:
    return _STATE_ORDER.index(state) if state in _STATE_ORDER else len(_STATE_ORDER)


def _tally(destination: str, pairs: list[tuple[ResultView, ExportView]]) -> DestinationTally:
    counts = Counter(export.state for _, export in pairs)
    sent = [export.sent_at for _, export in pairs if export.sent_at is not None]
    return DestinationTally(
        destination=destination,
        counts=tuple(sorted(counts.items(), key=lambda kv: _state_rank(kv[0]))),
        max_attempts=max(export.attempts for _, export in pairs),
        last_sent_at=max(sent) if sent else None,
        attention=tuple(
            (obj, export) for obj, export in pairs if export.state in ATTENTION_STATES
        ),
    )


def group_results(results: tuple[ResultView, ...]) -> tuple[ResultSeriesGroup, ...]:
    """Group ``results`` by series (in order of first appearance), exports by destination."""
    by_series: dict[str, list[ResultView]] = {}
    for obj in results:
        by_series.setdefault(obj.series_instance_uid, []).append(obj)
    groups = []
    for series_uid, objects in by_series.items():
        per_destination: dict[str, list[tuple[ResultView, ExportView]]] = {}
        for obj in objects:
            for export in obj.exports:
                per_destination.setdefault(export.destination, []).append((obj, export))
        kinds = sorted({obj.kind for obj in objects})
        groups.append(
            ResultSeriesGroup(
                kind="/".join(kinds),
                series_instance_uid=series_uid,
                objects=tuple(objects),
                destinations=tuple(_tally(d, p) for d, p in sorted(per_destination.items())),
            )
        )
    return tuple(groups)
