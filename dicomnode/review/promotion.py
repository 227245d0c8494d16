"""Which classifier is primary, and promoting a shadow to it.

The primary is recorded in the ``active_classifier`` table: its newest row (``NAME@VERSION`` of
the model registry) overrides ``[pipeline] classifier``; with no row the configuration decides.
Workers read it when they start (``dicomnode worker``), so a promotion takes effect when the
node or its workers restart. ``promote`` admits a model only when, on the latest verdicts of
the jobs it ran on as shadow, it classified at least as many studies correctly as the primary
did and found at least as many of the positives (same jobs, so the same truth); ``force``
overrides that. Every decision, refused ones too, is in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.audit import record_action
from dicomnode.db.models import ActiveClassifier
from dicomnode.errors import DicomNodeError
from dicomnode.review.validation import Tally, is_positive, latest_verdicts


@dataclass(frozen=True)
class Decision:
    promoted: bool
    explanation: str


def active_classifier(sessions: sessionmaker[Session]) -> str | None:
    """The promoted primary ``NAME@VERSION``; None when the configuration decides."""
    with sessions() as session:
        row = session.scalars(select(ActiveClassifier).order_by(ActiveClassifier.id.desc())
                              .limit(1)).first()
        return None if row is None else f"{row.name}@{row.version}"


def compare(session: Session, ref: str) -> tuple[Tally, Tally]:
    """(primary, candidate) scored on the latest verdicts of the jobs the candidate shadowed."""
    primary, candidate = Tally(), Tally()
    for verdict in latest_verdicts(session):
        models = verdict.models or {}
        shadow, judged = models.get("shadow"), models.get("primary")
        if not shadow or not judged or f"{shadow.get('name')}@{shadow.get('version')}" != ref:
            continue
        truth = is_positive(judged.get("label")) == (verdict.classification == "agree")
        primary.add(is_positive(judged.get("label")), truth)
        candidate.add(is_positive(shadow.get("label")), truth)
    return primary, candidate


def promote(sessions: sessionmaker[Session], ref: str, *, by: str, force: bool) -> Decision:
    """Make ``ref`` the primary when the verdicts support it (or ``force``)."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise DicomNodeError(f"model {ref!r}: write NAME@VERSION")
    with sessions() as session:
        primary, candidate = compare(session, ref)
    figures = (f"on {candidate.verdicts} reviewed job(s): {ref} {candidate.correct} correct, "
               f"{candidate.tp} positives found; primary {primary.correct} correct, "
               f"{primary.tp} positives found")
    good = candidate.verdicts > 0 and candidate.correct >= primary.correct and (
        candidate.tp >= primary.tp)
    if not good and not force:
        record_action(sessions, by, "promote", f"promotion of {ref} refused ({figures})")
        why = "no verdict on a job it shadowed" if candidate.verdicts == 0 else "worse"
        return Decision(False, f"not promoted: {why} ({figures}); --force overrides")
    with sessions() as session, session.begin():
        session.add(ActiveClassifier(name=name, version=version, promoted_by=by,
                                     forced=not good))
    forced = " FORCED against the verdicts" if not good else ""
    record_action(sessions, by, "promote", f"{ref} promoted to primary{forced} ({figures})")
    return Decision(True, f"{ref} is the primary classifier from the next worker start"
                          f"{forced} ({figures})")
