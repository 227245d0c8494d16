"""multipart/related bodies read with the standard library's ``email`` parser.

An independent reader of what the node writes: the node's own codec
(``dicomnode.web.multipart``) is checked against it, and the peers' clients use it, so no
test trusts the node's parser to judge the node's output.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """(headers with lower-case names, payload) of each part of a multipart body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ValueError(f"not a multipart body for Content-Type {content_type!r}")
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            raise ValueError("a multipart part without a payload")
        headers = {name.lower(): str(value).strip() for name, value in part.raw_items()}
        parts.append((headers, payload))
    return parts


def payloads(body: bytes, content_type: str) -> list[bytes]:
    return [payload for _, payload in parse_multipart(body, content_type)]
