"""What the node and the pipeline agree on, in one place both may import.

Free of torch, networking and SQL (``tests/test_dependency_rules.py`` checks it): pipeline/
imports nothing else of dicomnode/, and the node reaches the pipeline only through these
records and the processor named in configuration.

- ``results``: the result file record, its kinds, prior reports, the process request and
  outcome.
- ``states``: series, job and export states (their values are what the database stores).
- ``events``: the kinds of events on a study's timeline.
- ``errors``: the base error class that carries the retry policy.
- ``stack``: the geometry rules a series must meet to be analysed (used by the node's series
  selection and by the pipeline's reader).
"""

from dicomnode.contracts.errors import AnalysisError, is_retryable
from dicomnode.contracts.events import EventKind
from dicomnode.contracts.results import (
    PriorReport,
    ProcessOutcome,
    ProcessRequest,
    ResultFile,
    ResultKind,
)
from dicomnode.contracts.states import ExportState, JobState, SeriesState

__all__ = [
    "AnalysisError",
    "EventKind",
    "ExportState",
    "JobState",
    "PriorReport",
    "ProcessOutcome",
    "ProcessRequest",
    "ResultFile",
    "ResultKind",
    "SeriesState",
    "is_retryable",
]
