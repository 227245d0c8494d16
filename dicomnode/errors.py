"""Exceptions raised by the node on purpose."""


class DicomNodeError(Exception):
    """Base class of the node's own errors."""


class ConfigError(DicomNodeError):
    """The configuration file or an environment override is invalid."""


class StorageError(DicomNodeError):
    """An instance could not be stored durably."""


class ProcessorError(DicomNodeError):
    """The configured processor could not be loaded or failed on a job."""
