"""Completion, series choice, job claims with leases, results and exports, on a real SQLite file."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicomnode.contracts import ResultFile, ResultKind
from dicomnode.db.models import (
    Event,
    Export,
    ExportState,
    Job,
    JobState,
    ResultObject,
    Series,
    SeriesState,
    utcnow,
)
from dicomnode.db.queue import JobQueue
from dicomnode.db.records import InstanceRecord, InstanceRecorder
from dicomnode.jobs.assembler import Assembler

from .conftest import both_backends, det_uid

pytestmark = both_backends


def record_series(recorder: InstanceRecorder, study: str, series: str, n: int, *,
                  description: str = "Chest", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
                  first: int = 0, number_gap_at: int | None = None) -> None:
    for i in range(first, first + n):
        sop = det_uid(series, str(i))
        recorder.record(InstanceRecord(
            study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT", path=f"spool/{study}/{series}/{sop}.dcm", size_bytes=1,
            series_description=description,
            instance_number=i + 1 + (2 if number_gap_at is not None and i >= number_gap_at else 0),
            image_type=image_type,
            rows=512, columns=512, image_position=f"0\\0\\{-2.0 * i}",
            image_orientation="1\\0\\0\\0\\1\\0", pixel_spacing="0.7\\0.7", slice_thickness=2.0,
        ))


def later(seconds: float = 60.0):
    return utcnow() + timedelta(seconds=seconds)


def test_quiet_study_gets_one_job_and_scouts_are_skipped(settings, sessions) -> None:
    rec = InstanceRecorder(sessions)
    study, chest, scout = (generate_uid(prefix=None) for _ in range(3))
    record_series(rec, study, chest, 60)
    record_series(rec, study, scout, 2, description="Topogram",
                  image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    asm = Assembler(sessions, settings)
    assert asm.evaluate_due(utcnow() - timedelta(seconds=5)) == []  # not quiet yet
    jobs = asm.evaluate_due(later())
    assert len(jobs) == 1
    assert asm.evaluate_due(later(120)) == []  # evaluated once
    with sessions() as s:
        states = dict(s.execute(select(Series.series_instance_uid, Series.state)).all())
        assert states == {chest: SeriesState.SELECTED, scout: SeriesState.SKIPPED}
        reason = s.scalar(select(Series.skip_reason).where(Series.series_instance_uid == scout))
        assert "topogram" in reason.lower() or "localizer" in reason.lower()
        kinds = s.scalars(select(Event.kind)).all()
        assert "series-skipped" in kinds and "study-complete" in kinds and "job-queued" in kinds


def test_unchanged_resend_is_not_processed_again_but_growth_is(settings, sessions) -> None:
    rec = InstanceRecorder(sessions)
    study, series = generate_uid(prefix=None), generate_uid(prefix=None)
    record_series(rec, study, series, 50)
    asm = Assembler(sessions, settings)
    assert len(asm.evaluate_due(later())) == 1
    record_series(rec, study, series, 50)  # duplicates: nothing new recorded
    assert asm.evaluate_due(later(120)) == []
    record_series(rec, study, series, 10, first=50)  # the series grew
    assert len(asm.evaluate_due(later(180))) == 1
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 2


def test_missing_instances_wait_then_proceed(settings, sessions) -> None:
    rec = InstanceRecorder(sessions)
    study, series = generate_uid(prefix=None), generate_uid(prefix=None)
    record_series(rec, study, series, 60, number_gap_at=30)  # numbers 31 and 32 missing
    s2 = replace(settings, node=replace(settings.node, max_wait_for_missing_s=100.0))
    asm = Assembler(sessions, s2)
    assert asm.evaluate_due(later(30)) == []  # waits for the missing slices
    assert len(asm.evaluate_due(later(200))) == 1  # then analyses what it has
    with sessions() as s:
        kinds = s.scalars(select(Event.kind)).all()
        assert kinds.count("waiting") == 1 and "incomplete" in kinds


def _queued_job(settings, sessions) -> int:
    rec = InstanceRecorder(sessions)
    record_series(rec, generate_uid(prefix=None), generate_uid(prefix=None), 45)
    (job_id,) = Assembler(sessions, settings).evaluate_due(later())
    return job_id


def test_claim_lease_expiry_and_reclaim_keep_uid_root(settings, sessions) -> None:
    job_id = _queued_job(settings, sessions)
    q = JobQueue(sessions, max_attempts=3)
    first = q.claim("host:1", lease_s=30)
    assert first is not None and first.job_id == job_id and len(first.files) == 45
    assert q.claim("host:2", lease_s=30) is None  # leased
    assert q.heartbeat(job_id, "host:1", 30)
    again = q.claim("host:2", lease_s=30, now=later(31))  # lease expired: worker died
    assert again is not None and again.attempt == 2
    assert again.uid_root == first.uid_root  # result UIDs stay the same
    assert not q.heartbeat(job_id, "host:1", 30)  # the old owner lost it
    q.complete(job_id, "host:1", [], {}, [])  # a stale owner cannot complete
    with sessions() as s:
        assert s.get_one(Job, job_id).state == JobState.RUNNING


def test_job_fails_for_good_after_max_attempts(settings, sessions) -> None:
    job_id = _queued_job(settings, sessions)
    q = JobQueue(sessions, max_attempts=2)
    for attempt in (1, 2):
        t = q.claim(f"h:{attempt}", lease_s=1, now=later(attempt * 10))
        assert t is not None and t.attempt == attempt
    assert q.claim("h:3", lease_s=1, now=later(100)) is None
    with sessions() as s:
        job = s.get_one(Job, job_id)
        assert job.state == JobState.FAILED and "every attempt" in job.error


def test_failure_is_retried_then_final(settings, sessions) -> None:
    job_id = _queued_job(settings, sessions)
    q = JobQueue(sessions, max_attempts=2)
    q.claim("w:1", 30)
    assert q.fail(job_id, "w:1", "boom", retry=True) == JobState.QUEUED
    q.claim("w:1", 30)
    assert q.fail(job_id, "w:1", "boom", retry=True) == JobState.FAILED


def _routes(sessions) -> list[tuple[str, str]]:
    """(result kind, destination) of every export row."""
    with sessions() as s:
        return sorted(s.execute(
            select(ResultObject.kind, Export.destination)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
        ).tuples())


def test_complete_records_results_and_exports_per_destination(settings, sessions) -> None:
    job_id = _queued_job(settings, sessions)
    q = JobQueue(sessions, max_attempts=2)
    ticket = q.claim("w:1", 30)
    assert ticket is not None
    results = [
        ResultFile(Path("outbox/seg.dcm"), ResultKind.SEG, "1.2.840.10008.5.1.4.1.1.66.4",
                   "1.2.3.1", "1.2.3"),
        ResultFile(Path("outbox/sr.dcm"), ResultKind.SR, "1.2.840.10008.5.1.4.1.1.88.34",
                   "1.2.4.1", "1.2.4"),
    ]
    dests = [("pacs", ("SEG", "SR", "OVERLAY")), ("reporting", ("SR",)), ("viewer", ("OVERLAY",))]
    assert q.complete(job_id, "w:1", results, {"ok": True}, dests)
    routed = {("SEG", "pacs"), ("SR", "pacs"), ("SR", "reporting")}  # none to "viewer"
    assert _routes(sessions) == sorted(routed)
    with sessions() as s:  # one sent, one failed: a re-run must start both over
        for export, state in zip(s.scalars(select(Export).order_by(Export.id)),
                                 (ExportState.SENT, ExportState.FAILED), strict=False):
            export.state, export.attempts = state, 3
        s.commit()
    # an operator re-run reuses the same rows and re-queues their exports
    assert q.requeue(job_id)
    q.claim("w:2", 30)
    assert q.complete(job_id, "w:2", results, {"ok": True}, dests)
    assert _routes(sessions) == sorted(routed)
    with sessions() as s:
        exports = s.scalars(select(Export)).all()
        assert {(e.state, e.attempts) for e in exports} == {(ExportState.PENDING, 0)}
    assert [p.sop_instance_uid for p in q.prior_reports(ticket.study_id, job_id + 1)] == ["1.2.4.1"]
