"""Exceptions raised by the node on purpose."""

from __future__ import annotations

import re


class DicomNodeError(Exception):
    """Base class of the node's own errors."""


class ConfigError(DicomNodeError):
    """The configuration file or an environment override is invalid."""


class StorageError(DicomNodeError):
    """An instance could not be stored durably."""


class ProcessorError(DicomNodeError):
    """The configured processor could not be loaded or failed on a job."""


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# Raised on purpose, written without values (AnalysisError: the contracts' base, PipelineError's)
_KEEP_TEXT = ("DicomNodeError", "AnalysisError")


def safe_message(exc: BaseException) -> str:
    """``Type: message`` fit for logs, ``jobs.error``, events, the API and pages.

    The node's and the pipeline's own errors name the attribute at fault, never its value, and
    are kept. Any other exception (pydicom, numpy, a decoder) may quote a value read from the
    data set, so every quoted part of its text is replaced by ``'…'``.
    """
    text = str(exc)
    own = any(cls.__name__ in _KEEP_TEXT for cls in type(exc).__mro__)
    if not own:
        text = _QUOTED.sub("'…'", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
