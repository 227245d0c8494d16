"""The interface between the node and an analysis processor.

The worker loads a processor by the import path named in ``[pipeline] processor`` (for example
``pipeline.processor:ChestCTProcessor``) once per process and calls :meth:`Processor.process`
for each job. The node defines this interface and the pipeline satisfies it structurally, so
neither package imports the other.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dicomnode.errors import ProcessorError


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
    """

    job_id: int
    files: tuple[Path, ...]
    out_dir: Path
    uid_root: str
    predecessors: tuple[PriorReport, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class ResultObject(Protocol):
    """A DICOM file a processor wrote into ``ProcessRequest.out_dir``."""

    @property
    def path(self) -> Path: ...

    @property
    def kind(self) -> str: ...  # "SEG", "SR", "OVERLAY" (one per file)

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def sop_instance_uid(self) -> str: ...

    @property
    def series_instance_uid(self) -> str: ...


@runtime_checkable
class ProcessOutcome(Protocol):
    """What a processor returns: the files it wrote and a JSON-serialisable summary."""

    @property
    def objects(self) -> Sequence[ResultObject]: ...

    @property
    def summary(self) -> Mapping[str, Any]: ...


@runtime_checkable
class Processor(Protocol):
    """An analysis that turns one CT series into DICOM result objects."""

    def process(self, request: ProcessRequest) -> ProcessOutcome: ...


def load_processor(import_path: str, settings: Mapping[str, Any]) -> Processor:
    """Import ``module:Factory`` and call ``Factory(settings)`` once; check the interface."""
    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise ProcessorError(f"processor must be 'module:Name', got {import_path!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ProcessorError(f"cannot import processor {import_path!r}: {exc}") from exc
    processor = factory(settings)
    if not isinstance(processor, Processor):
        raise ProcessorError(f"{import_path!r} does not provide process(request)")
    return processor
