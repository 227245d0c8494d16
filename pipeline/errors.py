"""Exceptions raised by the analysis pipeline."""


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class SeriesError(PipelineError):
    """The DICOM series cannot be turned into a consistent CT volume (spacing, orientation...)."""


class ModelError(PipelineError):
    """A model cannot be loaded: unknown name, missing weights file or checksum mismatch."""
