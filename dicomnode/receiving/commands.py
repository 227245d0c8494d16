"""The C-STORE command sets, read and written directly (PS3.7 §9.3.1, Implicit VR Little Endian).

A C-STORE request's command set is a handful of group-0000 elements; reading it with pydicom and
answering through pynetdicom's service class, primitive and encoder cost more CPU per instance
than storing the instance (measured with py-spy on the receiver, issue 9). Here the request is
read in one pass over the bytes and the response PDU is built with ``struct``.

``parse_store_command`` returns None for anything that is not a plain, well-formed C-STORE-RQ
with a data set (another command, a truncated element, a non-ASCII UID, no Message ID): such a
command takes pynetdicom's general path, which answers or aborts as before.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_RESPONDED = 0x0120
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE = 0x1000
_ELEMENT_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")
_P_DATA_TF = 0x04
_LAST_COMMAND_FRAGMENT = 0x03


@dataclass(frozen=True)
class StoreCommand:
    """What the receiver needs from a C-STORE-RQ command set."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


def _elements(raw: bytes) -> dict[int, bytes] | None:
    """Group-0000 elements by element number; None if the bytes are not a clean command set."""
    out: dict[int, bytes] = {}
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < _ELEMENT_HEADER.size:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(raw, offset)
        offset += _ELEMENT_HEADER.size
        if group != 0x0000 or length > end - offset:
            return None
        out[element] = raw[offset:offset + length]
        offset += length
    return out


def _us(value: bytes | None) -> int | None:
    return _US.unpack_from(value)[0] if value is not None and len(value) == 2 else None


def _uid(value: bytes | None) -> str | None:
    if value is None:
        return ""
    try:
        return value.decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError:
        return None


def parse_store_command(raw: bytes) -> StoreCommand | None:
    """A C-STORE-RQ with a data set, or None (see the module docstring)."""
    elements = _elements(raw)
    if elements is None or _us(elements.get(_COMMAND_FIELD)) != C_STORE_RQ:
        return None
    message_id = _us(elements.get(_MESSAGE_ID))
    data_set_type = _us(elements.get(_DATA_SET_TYPE))
    sop_class = _uid(elements.get(_AFFECTED_SOP_CLASS))
    sop_instance = _uid(elements.get(_AFFECTED_SOP_INSTANCE))
    if (message_id is None or data_set_type is None or data_set_type == NO_DATA_SET
            or sop_class is None or sop_instance is None):
        return None
    return StoreCommand(message_id, sop_class, sop_instance)


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    data = text.encode("ascii", "replace")
    return data + pad if len(data) % 2 else data


def store_response_pdu(
    context_id: int, command: StoreCommand, status: int, comment: str = ""
) -> bytes:
    """The whole P-DATA-TF PDU carrying the C-STORE-RSP for ``command``.

    As pynetdicom answers: the request's SOP Class and Instance UIDs and Message ID, the status,
    and an Error Comment with a failure or warning status (never with success)."""
    body = [
        _element(_AFFECTED_SOP_CLASS, _padded(command.sop_class_uid, b"\x00")),
        _element(_COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        _element(_MESSAGE_ID_RESPONDED, _US.pack(command.message_id)),
        _element(_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        _element(_STATUS, _US.pack(status)),
    ]
    if comment and status != 0x0000:
        body.append(_element(_ERROR_COMMENT, _padded(comment, b" ")))
    body.append(_element(_AFFECTED_SOP_INSTANCE, _padded(command.sop_instance_uid, b"\x00")))
    joined = b"".join(body)
    command_set = _element(0x0000, struct.pack("<I", len(joined))) + joined
    pdv = struct.pack(">IBB", len(command_set) + 2, context_id, _LAST_COMMAND_FRAGMENT)
    return struct.pack(">BBI", _P_DATA_TF, 0, len(pdv) + len(command_set)) + pdv + command_set
