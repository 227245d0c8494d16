"""A study's timeline for the study page, with runs of like events folded into one line.

Every exported object records its own ``exported`` event (the audit trail keeps them all), so a
job with an overlay series adds a hundred lines that say the same thing. Consecutive events of
the same kind and job are shown as one entry that counts them; the page lists the single events
under it on demand.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from dicomnode.db.queries.views import EventView

FOLD_MIN = 3  # runs of at least this many like events are folded
_OBJECT_TO_DESTINATION = re.compile(r"^(?P<kind>\S+) \S+ to (?P<destination>.+)$")


@dataclass(frozen=True)
class TimelineEntry:
    """One event, or a run of consecutive events of the same kind and job."""

    kind: str
    job_id: int | None
    first_at: datetime
    last_at: datetime
    message: str  # the event's own message, or what the folded run holds
    events: tuple[EventView, ...]

    @property
    def folded(self) -> bool:
        return len(self.events) > 1


def _summary(events: list[EventView]) -> str:
    """"SEG 1, SR 2, OVERLAY 119 to pacs" for object events, else a count and the first one."""
    matches = [m for e in events if (m := _OBJECT_TO_DESTINATION.match(e.message))]
    if len(matches) == len(events):
        per_destination: dict[str, Counter[str]] = {}
        for m in matches:
            per_destination.setdefault(m["destination"], Counter())[m["kind"]] += 1
        return "; ".join(
            ", ".join(f"{kind} {n}" for kind, n in kinds.items()) + f" to {destination}"
            for destination, kinds in per_destination.items()
        )
    return f"{len(events)} events; the first: {events[0].message}"


def fold_events(events: list[EventView]) -> list[TimelineEntry]:
    """The timeline with runs of ``FOLD_MIN`` or more like events folded, order kept."""
    runs: list[list[EventView]] = []
    for event in events:
        last = runs[-1][-1] if runs else None
        if last is not None and (last.kind, last.job_id) == (event.kind, event.job_id):
            runs[-1].append(event)
        else:
            runs.append([event])
    entries: list[TimelineEntry] = []
    for run in runs:
        groups = [run] if len(run) >= FOLD_MIN else [[e] for e in run]
        for group in groups:
            entries.append(TimelineEntry(
                kind=group[0].kind, job_id=group[0].job_id, first_at=group[0].at,
                last_at=group[-1].at,
                message=group[0].message if len(group) == 1 else _summary(group),
                events=tuple(group),
            ))
    return entries
