"""Complete as soon as it is complete: ask the sending PACS how many instances each series has.

For a study sent by a configured ``[[sources]]`` PACS, once instances have stopped arriving for
``expected_counts_after_s``, the node asks that PACS (C-FIND, SERIES level, Number of Series
Related Instances) and compares with what it holds. Matching counts complete the study at once;
a mismatch or a failed query leaves the quiet period as the fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

from dicomnode.config import Source

log = logging.getLogger(__name__)

FIND_PENDING = frozenset({0xFF00, 0xFF01})
MAX_SERIES = 1000
QUERY_TIMEOUT_S = 5.0


class CountQueryError(Exception):
    """The source PACS could not tell the expected counts."""


@dataclass(frozen=True)
class CountCheck:
    matched: bool
    detail: str  # for the study's timeline: which series differ, or how many matched


def expected_counts(source: Source, calling_ae_title: str, study_uid: str,
                    timeout_s: float = QUERY_TIMEOUT_S) -> dict[str, int]:
    """Series Instance UID -> NumberOfSeriesRelatedInstances, as the source PACS reports."""
    model = StudyRootQueryRetrieveInformationModelFind
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(model)
    try:
        assoc = ae.associate(source.host, source.port, ae_title=source.ae_title)
    except OSError as exc:
        raise CountQueryError(f"cannot associate with {source.name}: {exc}") from exc
    if not assoc.is_established:
        raise CountQueryError(f"{source.name} did not accept the C-FIND association")
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.NumberOfSeriesRelatedInstances = ""
    counts: dict[str, int] = {}
    try:
        for status, identifier in assoc.send_c_find(query, model):
            code = getattr(status, "Status", None)
            if code is None:
                raise CountQueryError(f"{source.name}: no C-FIND response")
            if int(code) in FIND_PENDING and identifier is not None:
                counts[str(identifier.SeriesInstanceUID)] = _count(identifier)
                if len(counts) > MAX_SERIES:
                    raise CountQueryError(f"{source.name}: too many series")
            elif int(code) != 0x0000:
                raise CountQueryError(f"{source.name}: C-FIND answered 0x{int(code):04X}")
    except (AttributeError, ValueError) as exc:
        raise CountQueryError(f"{source.name}: unreadable C-FIND answer ({exc})") from exc
    finally:
        if assoc.is_established:
            assoc.release()
    return counts


def _count(identifier: Dataset) -> int:
    value = identifier.get("NumberOfSeriesRelatedInstances")
    if value in (None, ""):
        raise ValueError("NumberOfSeriesRelatedInstances missing")
    return int(value)


def compare(expected: dict[str, int], held: dict[str, int]) -> CountCheck:
    """Every series the node received must be complete; series the PACS did not send (a
    routing rule may send only some) do not hold the study back."""
    if not held:
        return CountCheck(False, "no series received")
    missing = {uid: (n, expected.get(uid)) for uid, n in held.items() if expected.get(uid) != n}
    if missing:
        first = ", ".join(f"{uid}: {have} of {want}" for uid, (have, want)
                          in list(missing.items())[:3])
        return CountCheck(False, f"{len(missing)} series incomplete ({first})")
    return CountCheck(True, f"{len(held)} series complete "
                            f"({sum(held.values())} instances as the PACS reports)")
