"""Exceptions raised by the analysis pipeline."""


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class SeriesError(PipelineError):
    """The DICOM series cannot be turned into a consistent CT volume (spacing, orientation...)."""


class ModelError(PipelineError):
    """A model cannot be loaded: unknown name, missing weights file or checksum mismatch."""


# Errors of the input itself (a series that cannot be read, a model that cannot load) repeat on
# every attempt; the node's worker reads this attribute and does not retry them.
PipelineError.retryable = False  # type: ignore[attr-defined]
