"""A one-pass scan of a received data set's top level, for the receiver's checks and row.

pydicom's reader builds an element object for every element, sequences and their items
included: about 0.9 ms for a CT slice's hundred elements here, a quarter of the receiver's CPU
per instance. The receiver reads a score of top-level values and the pixel data's length, so
this scan walks the top level once with ``struct``, steps over sequences (nested ones included)
without reading them, and returns a pydicom ``Dataset`` of the top-level elements as raw
elements: the same values as pydicom's reader, decoded only when read.

Sequences are not kept (nothing the receiver reads is inside one; in implicit VR a sequence of
defined length cannot be told from other elements without the dictionary and is kept raw).
Anything unexpected (a length past the end, nesting deeper than ``MAX_DEPTH``, an unknown item
tag) raises ``ScanError`` and the caller reads the data set with pydicom instead; only little
endian transfer syntaxes are scanned (the node accepts no other).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import UID

Buffer = bytes | memoryview

MAX_DEPTH = 16
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_TAG = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


@dataclass(frozen=True)
class Syntax:
    """What a transfer syntax means for reading a data set (pydicom's ``UID`` is slow to build,
    and the receiver asks for every instance)."""

    implicit: bool
    little_endian: bool
    deflated: bool
    encapsulated: bool


@lru_cache(maxsize=64)
def syntax_of(transfer_syntax: str) -> Syntax:
    uid = UID(transfer_syntax)
    return Syntax(uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated, uid.is_encapsulated)


class ScanError(ValueError):
    """The data set is not what the scan reads; read it with pydicom."""


def _header(buf: Buffer, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, value offset) of the element at ``pos``."""
    group, element = _TAG.unpack_from(buf, pos)
    tag = (group << 16) | element
    if implicit or group == 0xFFFE:
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    return tag, vr, _U16.unpack_from(buf, pos + 6)[0], pos + 8


def _skip_elements(buf: Buffer, pos: int, end_tag: int, implicit: bool, depth: int) -> int:
    """Step over elements up to and including the delimiter ``end_tag``; the offset after it."""
    if depth > MAX_DEPTH:
        raise ScanError("sequences nested too deeply")
    while True:
        if pos + 8 > len(buf):
            raise ScanError("undefined length without its delimiter")
        tag, vr, length, start = _header(buf, pos, implicit)
        if tag == end_tag:
            return start
        pos = _skip_value(buf, tag, vr, length, start, implicit, depth)


def _skip_value(
    buf: Buffer, tag: int, vr: bytes | None, length: int, start: int, implicit: bool, depth: int
) -> int:
    if length != UNDEFINED:
        end = start + length
        if end > len(buf):
            raise ScanError("a value runs past the end of the data set")
        return end
    if tag == _ITEM:
        return _skip_elements(buf, start, _ITEM_END, implicit, depth + 1)
    # a sequence (or encapsulated pixel data) of undefined length: items up to its delimiter;
    # an explicit "UN" of undefined length holds implicit VR little endian (PS3.5 6.2.2)
    inner = implicit or vr == b"UN"
    pos = start
    while True:
        if pos + 8 > len(buf):
            raise ScanError("a sequence without its delimiter")
        item_tag, _, item_length, item_start = _header(buf, pos, True)
        if item_tag == _SEQUENCE_END:
            return item_start
        if item_tag != _ITEM:
            raise ScanError(f"unexpected tag {item_tag:08X} in a sequence")
        pos = _skip_value(buf, item_tag, None, item_length, item_start, inner, depth + 1)


def scan_top_level(data: Buffer, implicit: bool) -> Dataset:
    """The top-level, non-sequence elements of ``data`` (bytes or a memoryview of the received
    buffer: only the kept values are copied) as raw elements (see the module doc).

    An undefined-length value (encapsulated pixel data) is kept as pydicom keeps it: the bytes
    up to, not including, its sequence delimiter."""
    raw: dict[BaseTag, DataElement | RawDataElement] = {}
    pos, size = 0, len(data)
    while pos < size:
        if pos + 8 > size:
            raise ScanError("an element header cut short")
        tag, vr, length, start = _header(data, pos, implicit)
        end = _skip_value(data, tag, vr, length, start, implicit, 0)
        undefined = length == UNDEFINED
        # kept: plain elements, and pixel data of undefined length (encapsulated frames);
        # sequences (explicit "SQ", or any other undefined length) are stepped over
        if vr != b"SQ" and tag >> 16 != 0xFFFE and (not undefined or tag == _PIXEL_DATA):
            key = BaseTag(tag)
            raw[key] = RawDataElement(
                key, vr.decode("ascii") if vr is not None else None, length,
                bytes(data[start:end - 8 if undefined else end]), start, implicit, True, True,
                False,
            )
        pos = end
    return Dataset(raw)
