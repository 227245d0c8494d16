"""The node's one multipart/related codec (``dicomnode.web.multipart``) against an independent
implementation: the standard library's ``email`` package, in both directions (the incremental
reader fed in small chunks too)."""

from __future__ import annotations

import email.policy
import random
from email.encoders import encode_noop
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from pathlib import Path

import pytest

from dicomnode.web.multipart import (
    MultipartError,
    MultipartReader,
    Part,
    boundary_of,
    encode_multipart,
    multipart_content_type,
    new_boundary,
    read_multipart,
)
from tests.peers.multipart import parse_multipart


def _awkward_payloads() -> list[bytes]:
    rng = random.Random(13)
    noise = bytes(rng.randrange(256) for _ in range(5000))
    return [
        noise,
        b"",  # an empty part
        b"\r\n--not-the-boundary\r\n\r\n",  # looks like a delimiter, is not one
        bytes(range(256)) * 4,
    ]


def test_what_the_node_writes_reads_back_with_the_email_parser(tmp_path: Path) -> None:
    data = _awkward_payloads()
    streamed = tmp_path / "instance.dcm"
    streamed.write_bytes(data[0])
    parts = [Part("application/dicom", path=streamed, location="/studies/1/series/2")]
    parts += [Part("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", data=d)
              for d in data[1:]]
    boundary = new_boundary()
    content_type = multipart_content_type("application/dicom", boundary)
    parsed = parse_multipart(encode_multipart(parts, boundary), content_type)
    assert [payload for _, payload in parsed] == data
    headers = [h for h, _ in parsed]
    assert headers[0] == {"content-type": "application/dicom",
                          "content-location": "/studies/1/series/2"}
    assert headers[1]["content-type"] == (
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert boundary_of(content_type) == boundary


def test_what_the_email_package_writes_the_node_splits() -> None:
    # The email generator rewrites bare CR and LF in payloads, so these have none.
    rng = random.Random(7)
    data = [bytes(rng.choice([b for b in range(256) if b not in (10, 13)]) for _ in range(3000)),
            b"plain text part"]
    message = MIMEMultipart("related", boundary="Zz-b0undary-42", type="application/dicom")
    for index, payload in enumerate(data):
        part = MIMEApplication(payload, "dicom", _encoder=encode_noop)
        part["Content-Location"] = f"/instances/{index}"
        message.attach(part)
    head, _, body = message.as_bytes(policy=email.policy.HTTP).partition(b"\r\n\r\n")
    content_type = head.decode("ascii").split("\r\n")[0].partition(":")[2].strip()
    split = read_multipart(body, boundary_of(content_type))
    assert [payload for _, payload in split] == data
    assert [h["content-location"] for h, _ in split] == ["/instances/0", "/instances/1"]
    assert all(h["content-type"] == "application/dicom" for h, _ in split)


def test_the_incremental_reader_agrees_with_the_email_parser_chunk_by_chunk() -> None:
    data = _awkward_payloads()
    boundary = new_boundary()
    body = encode_multipart([Part("application/dicom", data=d) for d in data], boundary)
    expected = parse_multipart(body, multipart_content_type("application/dicom", boundary))
    parts: list[bytearray] = []

    class Sink:
        def __init__(self) -> None:
            parts.append(bytearray())

        def write(self, chunk: bytes) -> None:
            parts[-1].extend(chunk)

        def close(self) -> None:
            pass

    reader = MultipartReader(boundary, lambda headers: Sink())
    for start in range(0, len(body), 7):  # chunks that split delimiters and headers
        reader.feed(body[start:start + 7])
    assert reader.finish() == len(data)
    assert [bytes(p) for p in parts] == [payload for _, payload in expected] == data
    with pytest.raises(MultipartError, match="closing boundary"):
        truncated = MultipartReader(boundary, lambda headers: Sink())
        truncated.feed(body[:-10])
        truncated.finish()
