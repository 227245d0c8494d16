"""Recording a radiologist's verdict on a job: the row, the review SR, its exports, the audit.

The verdict names the models it judges as the job's summary recorded them (classifier name,
version, label; the shadow classifier's too), so later promotions never rewrite history. The
review SR is written by ``[pipeline] verdict_writer`` (the node reaches the pipeline by name,
never by import), stored as a result object of kind ``VERDICT`` and queued to every destination
that receives SRs. The latest verdict of a job is the one that counts.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.db.audit import record_action
from dicomnode.db.models import Export, Job, JobState, ResultObject, Verdict
from dicomnode.receiving.storage import Storage

log = logging.getLogger(__name__)

VERDICT_KIND = "VERDICT"
MAX_COMMENT = 2000
MAX_MISSED = 1000
IMAGING_MEASUREMENT_REPORT = "126000"


class VerdictError(ValueError):
    """The verdict cannot be recorded (unknown job, job not done, unknown lesion number)."""


@dataclass(frozen=True)
class VerdictInput:
    agrees: bool
    findings: Mapping[int, bool] = field(default_factory=dict)  # lesion number -> accepted
    missed_findings: int = 0
    comment: str = ""


@dataclass(frozen=True)
class VerdictView:
    verdict_id: int
    job_id: int
    user_name: str
    created_at: datetime
    classification: str
    findings: dict[str, str]
    missed_findings: int
    comment: str
    models: dict[str, Any]
    sr_sop_instance_uid: str


def view(v: Verdict) -> VerdictView:
    return VerdictView(v.id, v.job_id, v.user_name, v.created_at, v.classification,
                       dict(v.findings), v.missed_findings, v.comment, dict(v.models),
                       v.sr_sop_instance_uid)


def judged_models(summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the verdict judges: the primary and shadow classifiers' model and answer."""
    def answer(block: Any) -> dict[str, Any] | None:
        if not isinstance(block, Mapping) or "error" in block:
            return None
        model = block.get("model") or {}
        return {"name": model.get("name", ""), "version": model.get("version", ""),
                "label": block.get("label", ""), "p_covid": block.get("p_covid")}

    summary = summary or {}
    lesions = [int(lesion["number"]) for lesion in summary.get("lesions") or []]
    return {"primary": answer(summary.get("classification")),
            "shadow": answer(summary.get("shadow")), "lesions": lesions}


def _writer(settings: Settings) -> Callable[..., dict[str, str]]:
    module, _, attr = settings.pipeline.verdict_writer.partition(":")
    try:
        found: Callable[..., dict[str, str]] = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise VerdictError(f"verdict writer {settings.pipeline.verdict_writer!r}: {exc}") from exc
    return found


def _ai_objects(storage: Storage, results: list[ResultObject]) -> tuple[Path, Path | None]:
    """The AI's measurement report (lowest series number among TID 1500 SRs) and its SEG."""
    reports: list[tuple[int, Path]] = []
    for obj in results:
        if obj.kind != "SR":
            continue
        path = storage.absolute(obj.path)
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError):
            continue
        concept = ds.get("ConceptNameCodeSequence") or [None]
        if concept[0] is not None and concept[0].get("CodeValue") == IMAGING_MEASUREMENT_REPORT:
            reports.append((int(ds.get("SeriesNumber") or 0), path))
    if not reports:
        raise VerdictError("the job has no AI report (SR) to review")
    seg = next((storage.absolute(o.path) for o in results if o.kind == "SEG"), None)
    return min(reports)[1], seg


def _check(job: Job | None, verdict: VerdictInput) -> Job:
    if job is None:
        raise LookupError("job not found")
    if job.state != JobState.DONE:
        raise VerdictError(f"job {job.id} is {job.state.value}: only finished jobs are reviewed")
    known = set(judged_models(job.summary)["lesions"])
    unknown = sorted(set(verdict.findings) - known)
    if unknown:
        raise VerdictError(f"job {job.id} has no lesion(s) {unknown}")
    return job


class VerdictRecorder:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session],
                 storage: Storage) -> None:
        self._settings = settings
        self._sessions = sessions
        self._storage = storage

    def record(self, job_id: int, reader: str, verdict: VerdictInput) -> VerdictView:
        """Store the verdict, write its SR, queue the SR's exports, audit; one view back."""
        with self._sessions() as session, session.begin():
            job = _check(session.get(Job, job_id), verdict)
            row = Verdict(
                job_id=job_id, user_name=reader,
                classification="agree" if verdict.agrees else "disagree",
                findings={str(k): "accept" if v else "reject"
                          for k, v in sorted(verdict.findings.items())},
                missed_findings=verdict.missed_findings, comment=verdict.comment[:MAX_COMMENT],
                models=judged_models(job.summary),
            )
            session.add(row)
            session.flush()
            verdict_id, uid_root = row.id, f"{job.uid_root}.verdict.{row.id}"
            results = list(session.scalars(
                select(ResultObject).where(ResultObject.job_id == job_id)))
        ai_sr, seg = _ai_objects(self._storage, results)
        out = self._storage.outbox_dir(job_id) / f"verdict-{verdict_id:06d}.dcm"
        written = _writer(self._settings)(
            ai_sr, seg, {"agrees": verdict.agrees, "findings": dict(verdict.findings),
                         "missed_findings": verdict.missed_findings,
                         "comment": verdict.comment},
            reader=reader, organization=self._settings.node.ae_title, uid_root=uid_root,
            out_path=out)
        self._queue_exports(job_id, verdict_id, written, out)
        record_action(self._sessions, reader, "verdict",
                      f"verdict {verdict_id} on job {job_id}: classification "
                      f"{'agree' if verdict.agrees else 'disagree'}, "
                      f"{sum(verdict.findings.values())}/{len(verdict.findings)} lesions "
                      f"accepted, {verdict.missed_findings} missed", job_id=job_id)
        log.info("verdict %d on job %d recorded by %s", verdict_id, job_id, reader)
        with self._sessions() as session:
            return view(session.get_one(Verdict, verdict_id))

    def _queue_exports(self, job_id: int, verdict_id: int, written: Mapping[str, str],
                       out: Path) -> None:
        with self._sessions() as session, session.begin():
            obj = ResultObject(
                job_id=job_id, kind=VERDICT_KIND, sop_class_uid=written["sop_class_uid"],
                sop_instance_uid=written["sop_instance_uid"],
                series_instance_uid=written["series_instance_uid"],
                path=self._storage.relative(out))
            session.add(obj)
            session.flush()
            for destination in self._settings.destinations:
                if "SR" in destination.objects:
                    session.add(Export(result_object_id=obj.id, destination=destination.name))
            session.get_one(Verdict, verdict_id).sr_sop_instance_uid = obj.sop_instance_uid


def verdicts_of_jobs(session: Session, job_ids: list[int]) -> dict[int, list[VerdictView]]:
    """Verdicts per job, newest first."""
    out: dict[int, list[VerdictView]] = {}
    if not job_ids:
        return out
    rows = session.scalars(select(Verdict).where(Verdict.job_id.in_(job_ids))
                           .order_by(Verdict.id.desc()))
    for v in rows:
        out.setdefault(v.job_id, []).append(view(v))
    return out
