"""The base class of errors an analysis raises on purpose, with its retry policy."""

from __future__ import annotations

from typing import ClassVar


class AnalysisError(Exception):
    """An error the analysis raises on purpose.

    ``retryable`` says whether running the job again may succeed: False for errors of the
    input itself (a series that cannot be read, a model that cannot load), which repeat on
    every attempt. Subclasses set it; the node's worker reads it through :func:`is_retryable`.
    The message is shown to operators as it is (``dicomnode.errors.safe_message``): it names
    the attribute at fault, never a value read from the data set.
    """

    retryable: ClassVar[bool] = True


def is_retryable(exc: BaseException) -> bool:
    """The retry policy of ``exc``: its class's when it is an ``AnalysisError``; any other
    exception (out of memory, a lost file system) may pass, so the job is tried again."""
    return exc.retryable if isinstance(exc, AnalysisError) else True
