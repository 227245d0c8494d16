"""An incremental reader of multipart/related bodies (RFC 2387), for STOW-RS requests on the node
and WADO-RS responses on a remote worker: chunks go in as they arrive, each part's payload goes
straight to its sink (a file), so neither side holds a whole series in memory.

Bounded: a part header block over ``MAX_HEADER_BYTES``, more than ``max_parts`` parts or more
than ``max_bytes`` in all raise :class:`MultipartError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart message, or exceeds a limit."""


class PartSink(Protocol):
    def write(self, data: bytes) -> object: ...

    def close(self) -> None: ...


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type header."""
    for piece in content_type.split(";")[1:]:
        name, sep, value = piece.strip().partition("=")
        if sep and name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"')
    raise MultipartError("the multipart Content-Type has no boundary")


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers


class MultipartReader:
    """``feed`` chunks, then ``finish``; ``open_part(headers)`` gives each part's sink."""

    def __init__(
        self,
        boundary: str,
        open_part: Callable[[dict[str, str]], PartSink],
        *,
        max_parts: int = 100_000,
        max_bytes: int = 1 << 40,
    ) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("bad multipart boundary")
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._open_part = open_part
        self._max_parts = max_parts
        self._max_bytes = max_bytes
        self._buffer = bytearray(b"\r\n")  # the first delimiter has no CRLF before it
        self._state = "preamble"
        self._sink: PartSink | None = None
        self._total = 0
        self.parts = 0

    def feed(self, data: bytes) -> None:
        self._total += len(data)
        if self._total > self._max_bytes:
            raise MultipartError(f"the body exceeds {self._max_bytes} bytes")
        self._buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Advance as far as the buffer allows; True if another step may make progress."""
        buf, delim = self._buffer, self._delimiter
        if self._state in ("preamble", "body"):
            index = buf.find(delim)
            if index < 0:
                keep = len(delim) - 1
                if self._state == "body" and len(buf) > keep:
                    self._write(bytes(buf[: len(buf) - keep]))
                    del buf[: len(buf) - keep]
                elif self._state == "preamble" and len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("no multipart boundary found")
                return False
            if self._state == "body":
                self._write(bytes(buf[:index]))
                self._close_part()
            del buf[: index + len(delim)]
            self._state = "delimiter"
            return True
        if self._state == "delimiter":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = "done"
                buf.clear()
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            del buf[: end + 2]  # transport padding after the delimiter is ignored
            self._state = "headers"
            return True
        if self._state == "headers":
            end = buf.find(b"\r\n\r\n")
            if buf.startswith(b"\r\n"):
                end, skip = 0, 2
            else:
                skip = 4
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("a part's header block is too long")
                return False
            self.parts += 1
            if self.parts > self._max_parts:
                raise MultipartError(f"more than {self._max_parts} parts")
            self._sink = self._open_part(_headers(bytes(buf[:end])))
            del buf[: end + skip]
            self._state = "body"
            return True
        buf.clear()  # done: an epilogue is ignored
        return False

    def _write(self, data: bytes) -> None:
        if data and self._sink is not None:
            self._sink.write(data)

    def _close_part(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def finish(self) -> int:
        """Check that the closing delimiter arrived; returns the number of parts."""
        if self._state != "done":
            if self._sink is not None:
                self._sink.close()
            raise MultipartError("the multipart body ended before its closing boundary")
        return self.parts
