"""Local validation: how each classifier version does against this site's verdicts.

Only the latest verdict of each job counts. The reader judges the primary classifier's answer,
so the verdict fixes the truth: COVID-19 when the primary said COVID-19 and the reader agreed,
or said something else and the reader disagreed. Every model the job ran (primary and shadow)
is then scored against that truth: true/false positives and negatives, sensitivity, specificity
and PPV (None when undefined). Lesion figures (share accepted, findings missed) belong to the
primary, whose lesions the reader saw. Figures are given overall and per calendar month.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Verdict

POSITIVE_LABELS = frozenset({"covid19", "covid", "covid-19"})


@dataclass
class Tally:
    verdicts: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    lesions_reviewed: int = 0
    lesions_accepted: int = 0
    missed_findings: int = 0

    def add(self, positive: bool, truth: bool) -> None:
        self.verdicts += 1
        if positive:
            self.tp, self.fp = self.tp + truth, self.fp + (not truth)
        else:
            self.fn, self.tn = self.fn + truth, self.tn + (not truth)

    @property
    def correct(self) -> int:
        return self.tp + self.tn

    def figures(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float | None:
            return None if b == 0 else round(a / b, 4)

        return {
            "verdicts": self.verdicts, "tp": self.tp, "fp": self.fp, "tn": self.tn,
            "fn": self.fn,
            "sensitivity": ratio(self.tp, self.tp + self.fn),
            "specificity": ratio(self.tn, self.tn + self.fp),
            "ppv": ratio(self.tp, self.tp + self.fp),
            "accuracy": ratio(self.correct, self.verdicts),
            "lesions_reviewed": self.lesions_reviewed,
            "lesions_accepted": self.lesions_accepted,
            "accepted_lesion_share": ratio(self.lesions_accepted, self.lesions_reviewed),
            "missed_findings": self.missed_findings,
        }


@dataclass
class ModelScore:
    role: str  # "primary" or "shadow"
    name: str
    version: str
    total: Tally = field(default_factory=Tally)
    months: dict[str, Tally] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "model": self.key, "name": self.name,
                "version": self.version, **self.total.figures(),
                "by_month": {m: t.figures() for m, t in sorted(self.months.items())}}


def is_positive(label: str | None) -> bool:
    return (label or "").strip().lower() in POSITIVE_LABELS


def latest_verdicts(session: Session) -> list[Verdict]:
    newest = select(func.max(Verdict.id)).group_by(Verdict.job_id)
    return list(session.scalars(select(Verdict).where(Verdict.id.in_(newest))
                                .order_by(Verdict.id)))


def _score(scores: dict[tuple[str, str], ModelScore], role: str, answer: Mapping[str, Any],
           truth: bool, month: str, verdict: Verdict) -> None:
    key = (role, f"{answer.get('name', '')}@{answer.get('version', '')}")
    score = scores.setdefault(key, ModelScore(role, str(answer.get("name", "")),
                                              str(answer.get("version", ""))))
    positive = is_positive(answer.get("label"))
    for tally in (score.total, score.months.setdefault(month, Tally())):
        tally.add(positive, truth)
        if role == "primary":
            values = list(verdict.findings.values())
            tally.lesions_reviewed += len(values)
            tally.lesions_accepted += sum(v == "accept" for v in values)
            tally.missed_findings += verdict.missed_findings


def score_verdicts(verdicts: Iterable[Verdict]) -> list[ModelScore]:
    """One score per (role, model), over the given verdicts."""
    scores: dict[tuple[str, str], ModelScore] = {}
    for verdict in verdicts:
        primary = (verdict.models or {}).get("primary")
        if not primary:
            continue
        truth = is_positive(primary.get("label")) == (verdict.classification == "agree")
        month = verdict.created_at.strftime("%Y-%m")
        _score(scores, "primary", primary, truth, month, verdict)
        shadow = (verdict.models or {}).get("shadow")
        if shadow:
            _score(scores, "shadow", shadow, truth, month, verdict)
    return sorted(scores.values(), key=lambda s: (s.role != "primary", s.key))


def validation_report(session: Session) -> dict[str, Any]:
    verdicts = latest_verdicts(session)
    return {"verdicts": len(verdicts),
            "models": [s.as_dict() for s in score_verdicts(verdicts)]}
