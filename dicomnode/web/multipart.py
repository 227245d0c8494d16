"""HTTP Accept parsing and multipart/related bodies for WADO-RS (PS3.18 §8.7.3, §8.6.1.2).

Each part is written ``--boundary CRLF Content-Type: ... CRLF CRLF payload CRLF``, with the
closing ``--boundary--``: Cornerstone's WADO-RS loader reads exactly this layout (the first
line is the boundary, the part header is spelled ``Content-Type:``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body as (headers, payload); the inverse of ``encode_multipart``."""
    delimiter = b"--" + boundary.encode("ascii")
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header block")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append((headers, payload))
    return parts


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type header."""
    for piece in content_type.split(";"):
        name, sep, value = piece.strip().partition("=")
        if sep and name.lower() == "boundary":
            return value.strip('"')
    raise ValueError(f"no boundary in {content_type!r}")
