"""What the dashboard shows beside each study: the newest finished job's classification (its
verdict when the summary carries one), the radiologist's verdict on it, and the path of one
stored instance (its header gives the study date, which the database does not hold)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.ai_verdict import AIVerdict, ai_verdict
from dicomnode.db.models import Instance, Job, JobState, Series, Study, Verdict


@dataclass(frozen=True)
class StudyExtra:
    job_id: int | None
    classification: str  # "" when no finished job classified the study
    p_covid: float | None
    ai_verdict: AIVerdict | None  # the classifier's own verdict; None for older jobs
    verdict: str  # "agree", "disagree" or "" (not reviewed)
    reviewer: str
    instance_path: str  # relative to the data directory; "" when none is stored


def _newest_done_jobs(session: Session, study_ids: Collection[int]) -> dict[int, Job]:
    newest = (select(func.max(Job.id)).where(Job.study_id.in_(study_ids),
                                             Job.state == JobState.DONE)
              .group_by(Job.study_id))
    return {j.study_id: j for j in session.scalars(select(Job).where(Job.id.in_(newest)))}


def _latest_verdicts(session: Session, job_ids: Collection[int]) -> dict[int, Verdict]:
    newest = (select(func.max(Verdict.id)).where(Verdict.job_id.in_(job_ids))
              .group_by(Verdict.job_id))
    return {v.job_id: v for v in session.scalars(select(Verdict).where(Verdict.id.in_(newest)))}


def _one_instance(session: Session, study_ids: Collection[int]) -> dict[int, str]:
    first = (select(func.min(Instance.id)).join(Series, Instance.series_id == Series.id)
             .where(Series.study_id.in_(study_ids)).group_by(Series.study_id))
    rows = session.execute(select(Series.study_id, Instance.path)
                           .join(Instance, Instance.series_id == Series.id)
                           .where(Instance.id.in_(first)))
    return {study_id: path for study_id, path in rows}


def study_extras(session: Session, study_uids: Collection[str]) -> dict[str, StudyExtra]:
    if not study_uids:
        return {}
    rows = session.execute(select(Study.id, Study.study_instance_uid)
                           .where(Study.study_instance_uid.in_(study_uids)))
    ids = {study_id: uid for study_id, uid in rows}
    jobs = _newest_done_jobs(session, ids)
    verdicts = _latest_verdicts(session, [j.id for j in jobs.values()])
    paths = _one_instance(session, ids)
    out: dict[str, StudyExtra] = {}
    for study_id, uid in ids.items():
        job = jobs.get(study_id)
        block = (job.summary or {}).get("classification") if job is not None else None
        verdict = verdicts.get(job.id) if job is not None else None
        out[uid] = StudyExtra(
            job_id=job.id if job is not None else None,
            classification=str(block.get("label", "")) if isinstance(block, dict) else "",
            p_covid=block.get("p_covid") if isinstance(block, dict) else None,
            ai_verdict=ai_verdict(job.summary) if job is not None else None,
            verdict=verdict.classification if verdict is not None else "",
            reviewer=verdict.user_name if verdict is not None else "",
            instance_path=paths.get(study_id, ""),
        )
    return out
