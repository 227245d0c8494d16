"""The classifier's verdict as a job's summary carries it (``summary["verdict"]``, written by
the pipeline's processor): what the dashboard, the study page and ``/metrics`` show instead of
a bare label and probability. Jobs from before the verdict have no such block (``None``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Job, JobState

# The calls the pipeline writes; any other value is not shown or counted as a call.
VERDICT_CALLS = ("positive", "negative", "indeterminate", "not assessed", "not run")
MAX_STATEMENT_CHARS = 200


@dataclass(frozen=True)
class AIVerdict:
    call: str  # one of VERDICT_CALLS
    statement: str  # one line; no probability outside the validated domain
    p_covid_calibrated: float | None
    in_validated_domain: bool | None


def ai_verdict(summary: Mapping[str, Any] | None) -> AIVerdict | None:
    """The summary's verdict block, or None when it has none (older jobs) or it is malformed."""
    block = (summary or {}).get("verdict")
    if not isinstance(block, Mapping) or block.get("call") not in VERDICT_CALLS:
        return None
    statement = block.get("statement")
    p = block.get("p_covid_calibrated")
    in_domain = block.get("in_validated_domain")
    return AIVerdict(
        call=str(block["call"]),
        statement=statement[:MAX_STATEMENT_CHARS] if isinstance(statement, str) else "",
        p_covid_calibrated=float(p) if isinstance(p, int | float) else None,
        in_validated_domain=in_domain if isinstance(in_domain, bool) else None,
    )


def verdict_counts(session: Session) -> dict[str, int]:
    """Done jobs by their summary's verdict call (every call, 0 when none); jobs without a
    verdict block are not counted. One grouped query on the JSON path."""
    call = Job.summary[("verdict", "call")].as_string()
    counts = dict.fromkeys(VERDICT_CALLS, 0)
    rows = session.execute(select(call, func.count()).where(Job.state == JobState.DONE)
                           .group_by(call))
    for value, n in rows:
        if value in counts:
            counts[value] = n
    return counts
