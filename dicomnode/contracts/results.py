"""The records that cross between the node and the pipeline for one job."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ResultKind(enum.StrEnum):
    """What a result file holds; the value is stored in ``result_objects.kind`` and named in a
    destination's ``objects`` list."""

    SEG = "SEG"
    SR = "SR"
    OVERLAY = "OVERLAY"


@dataclass(frozen=True)
class ResultFile:
    """One DICOM file written for a job: where it is, what it is, and its three UIDs.

    The pipeline returns absolute paths (or paths relative to the request's ``out_dir``); the
    node's queue stores them relative to the data directory.
    """

    path: Path
    kind: ResultKind
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class PriorReport:
    """A result SR sent earlier for the same study, listed as a predecessor in a new SR."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class ProcessRequest:
    """One series to analyse.

    ``uid_root`` is fixed when the job first runs and stored in the database; processors derive
    every result UID from it deterministically, so a re-run writes the same objects again.
    ``options``: ``repair_uids`` (bool) asks the reader to repair malformed UIDs (offline
    analysis only; the node sends valid files).

    ``handoff``, when given, is called once with the SEG and SR files as soon as they are
    written, before the overlay series is rendered: the worker records them and queues their
    exports then, so a destination gets the structured results without waiting for the
    overlay. The files it was given are returned again in ``ProcessOutcome.objects``.
    """

    job_id: int
    files: tuple[Path, ...]
    out_dir: Path
    uid_root: str
    predecessors: tuple[PriorReport, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    handoff: Callable[[Sequence[ResultFile]], None] | None = None


@dataclass(frozen=True)
class ProcessOutcome:
    """What a processor returns: the files it wrote and a JSON-serialisable summary."""

    objects: tuple[ResultFile, ...]
    summary: Mapping[str, Any] = field(default_factory=dict)
