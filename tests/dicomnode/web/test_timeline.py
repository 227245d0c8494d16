"""The study page folds runs of like events (one ``exported`` per object) into one line."""

from __future__ import annotations

from datetime import datetime, timedelta

from dicomnode.db.queries.views import EventView
from dicomnode.web.timeline import fold_events

T0 = datetime(2026, 11, 22, 4, 52, 0)


def _event(i: int, kind: str, message: str, job_id: int | None = 1) -> EventView:
    return EventView(event_id=i, at=T0 + timedelta(seconds=i), kind=kind, message=message,
                     job_id=job_id)


def test_runs_of_exports_fold_into_one_entry_per_kind_and_job() -> None:
    events = [_event(0, "study-received", "from STORESCU", None), _event(1, "job-done", "ok")]
    events += [_event(2, "exported", "SEG 2.25.1 to pacs"),
               _event(3, "exported", "SR 2.25.2 to pacs")]
    events += [_event(4 + i, "exported", f"OVERLAY 2.25.{10 + i} to pacs") for i in range(119)]
    events += [_event(200, "exported", "SR 2.25.2 to archive")]
    events += [_event(201, "export-failed", "to pacs after 5 attempts")]
    entries = fold_events(events)
    assert [e.kind for e in entries] == ["study-received", "job-done", "exported", "export-failed"]
    exported = entries[2]
    assert exported.folded and len(exported.events) == 122
    assert exported.message == "SEG 1, SR 1, OVERLAY 119 to pacs; SR 1 to archive"
    assert (exported.first_at, exported.last_at) == (T0 + timedelta(seconds=2),
                                                     T0 + timedelta(seconds=200))
    assert not entries[0].folded and entries[0].message == "from STORESCU"


def test_short_runs_and_other_jobs_stay_apart() -> None:
    events = [_event(0, "exported", "SEG 2.25.1 to pacs"),
              _event(1, "exported", "SR 2.25.2 to pacs"),
              _event(2, "exported", "SEG 2.25.3 to pacs", job_id=2)]
    entries = fold_events(events)
    assert [len(e.events) for e in entries] == [1, 1, 1]
    odd = [_event(i, "export-retry", f"attempt {i} failed") for i in range(3)]
    (folded,) = fold_events(odd)
    assert folded.message == "3 events; the first: attempt 0 failed"
