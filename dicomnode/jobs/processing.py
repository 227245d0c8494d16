"""The interface between the node and an analysis processor.

The worker loads a processor by the import path named in ``[pipeline] processor`` (for example
``pipeline.processor:ChestCTProcessor``) once per process and calls :meth:`Processor.process`
for each job. The records it passes and gets back (``ProcessRequest``, ``ProcessOutcome``,
``ResultFile``) live in ``dicomnode.contracts``, the one part of the node the pipeline imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from dicomnode.contracts.results import ProcessOutcome, ProcessRequest
from dicomnode.errors import ProcessorError


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
