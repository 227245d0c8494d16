"""Exceptions raised by the analysis pipeline."""

from __future__ import annotations

from dicomnode.contracts.errors import AnalysisError


class PipelineError(AnalysisError):
    """Base class of every error the pipeline raises on purpose.

    Errors of the input itself (a series that cannot be read, a model that cannot load) repeat
    on every attempt, so the node's worker does not retry them.
    """

    retryable = False


class SeriesError(PipelineError):
    """The DICOM series cannot be turned into a consistent CT volume (spacing, orientation...)."""


class ModelError(PipelineError):
    """A model cannot be loaded: unknown name, missing weights file or checksum mismatch."""
