"""The study page groups a job's result objects by series and lists only the ones to act on."""

from __future__ import annotations

from datetime import datetime, timedelta

from dicomnode.db.queries.views import ExportView, ResultView
from dicomnode.web.resultgroups import group_results

T0 = datetime(2026, 11, 22, 3, 0, 0)


def _export(export_id: int, destination: str, state: str, attempts: int = 1) -> ExportView:
    return ExportView(
        export_id=export_id, job_id=1, study_instance_uid="1.2.3", kind="overlay",
        sop_instance_uid=f"2.25.{export_id}", destination=destination, state=state,
        attempts=attempts, next_attempt_at=T0, last_status=0xA700 if state == "failed" else None,
        last_error="out of resources" if state == "failed" else "",
        sent_at=T0 + timedelta(seconds=export_id) if state == "sent" else None,
    )


def _result(n: int, kind: str, series: str, *exports: ExportView) -> ResultView:
    return ResultView(result_id=n, kind=kind, sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                      sop_instance_uid=f"2.25.{1000 + n}", series_instance_uid=series,
                      created_at=T0, exports=exports)


def test_objects_are_grouped_by_series_and_states_counted_per_destination() -> None:
    overlays = [
        _result(i, "overlay", "2.25.9", _export(i, "PACS", "failed" if i == 7 else "sent",
                                                attempts=3 if i == 7 else 1),
                _export(100 + i, "ARCHIVE", "pending" if i < 3 else "sent"))
        for i in range(1, 121)
    ]
    seg = _result(500, "seg", "2.25.8", _export(500, "PACS", "sent"))
    groups = group_results((seg, *overlays))
    assert [g.series_instance_uid for g in groups] == ["2.25.8", "2.25.9"]
    assert groups[0].single is seg and groups[1].single is None
    overlay = groups[1]
    assert overlay.kind == "overlay" and len(overlay.objects) == 120
    archive, pacs = overlay.destinations  # sorted by destination name
    assert pacs.destination == "PACS" and dict(pacs.counts) == {"sent": 119, "failed": 1}
    assert pacs.failed == 1 and pacs.max_attempts == 3
    assert [(o.result_id, e.export_id) for o, e in pacs.attention] == [(7, 7)]
    assert dict(archive.counts) == {"sent": 118, "pending": 2}
    assert [o.result_id for o, _ in archive.attention] == [1, 2]
    assert archive.last_sent_at == T0 + timedelta(seconds=220)
    assert [s for s, _ in archive.counts] == ["sent", "pending"]  # fixed state order


def test_a_series_without_destinations_is_still_listed() -> None:
    groups = group_results((_result(1, "sr", "2.25.5"),))
    assert len(groups) == 1 and groups[0].destinations == () and groups[0].single is not None
