"""HTTP Accept parsing and the node's one multipart/related codec (RFC 2387): written for
WADO-RS responses (PS3.18 §8.7.3, §8.6.1.2), read incrementally for STOW-RS requests and for a
remote worker's WADO-RS downloads.

Each part is written ``--boundary CRLF Content-Type: ... CRLF CRLF payload CRLF``, with the
closing ``--boundary--``: Cornerstone's WADO-RS loader reads exactly this layout (the first
line is the boundary, the part header is spelled ``Content-Type:``).

The reader takes chunks as they arrive and sends each part's payload straight to its sink (a
file), so neither side holds a whole series in memory. Bounded: a part header block over
``MAX_HEADER_BYTES``, more than ``max_parts`` parts or more than ``max_bytes`` in all raise
:class:`MultipartError`. ``tests/dicomnode/web/test_multipart.py`` checks both directions
against the standard library's ``email`` parser.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

FILE_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type=...; transfer-syntax=...``."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def is_multipart(self) -> bool:
        return self.media_type == "multipart/related"

    @property
    def part_type(self) -> str:
        """The type of each part: the ``type`` parameter of a multipart range, else itself."""
        return self.params.get("type", "") if self.is_multipart else self.media_type

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header, highest quality first (stable for equal q).

    An absent or empty header gives ``*/*``. Quoted parameter values are unquoted.
    """
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for entry in header.split(","):
        pieces = [p.strip() for p in entry.split(";")]
        media_type = pieces[0].lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, sep, value = piece.partition("=")
            if not sep:
                continue
            name = name.strip().lower()
            value = value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            else:
                params[name] = value if name == "transfer-syntax" else value.lower()
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_content_type(part_type: str, boundary: str, transfer_syntax: str = "") -> str:
    """The response Content-Type of a multipart/related body whose parts are ``part_type``."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


@dataclass(frozen=True)
class Part:
    """One body part: bytes in memory or a file streamed from disk."""

    content_type: str
    data: bytes | None = None
    path: Path | None = None
    location: str = ""


def _part_header(boundary: str, part: Part) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {part.content_type}"]
    if part.location:
        lines.append(f"Content-Location: {part.location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(FILE_CHUNK_BYTES):
            yield chunk


def iter_multipart(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related message, one chunk at a time (files are streamed)."""
    for part in parts:
        yield _part_header(boundary, part)
        if part.path is not None:
            yield from _file_chunks(part.path)
        elif part.data is not None:
            yield part.data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def encode_multipart(parts: Iterable[Part], boundary: str) -> bytes:
    return b"".join(iter_multipart(parts, boundary))


# ---------------------------------------------------------------------------------------------
# Reading: STOW-RS request bodies on the node, WADO-RS responses on a remote worker


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


class _MemoryPart:
    def __init__(self, headers: dict[str, str], into: list[tuple[dict[str, str], bytes]]) -> None:
        self._headers, self._into, self._chunks = headers, into, bytearray()

    def write(self, data: bytes) -> None:
        self._chunks += data

    def close(self) -> None:
        self._into.append((self._headers, bytes(self._chunks)))


def read_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Every part of a whole body in memory as (headers with lower-case names, payload)."""
    parts: list[tuple[dict[str, str], bytes]] = []
    reader = MultipartReader(boundary, lambda headers: _MemoryPart(headers, parts))
    reader.feed(body)
    reader.finish()
    return parts
