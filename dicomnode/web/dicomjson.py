"""DICOM JSON (PS3.18 §F.2) of stored files: a cache of parsed headers, the attributes QIDO-RS
returns at each level (PS3.18 §10.6.3.3), and WADO-RS metadata with BulkDataURIs.

Headers are read without pixel data and kept in a bounded LRU cache keyed by path and checked
against the file's size and modification time, so a rewritten file is read again.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

log = logging.getLogger(__name__)

HEADER_CACHE_ENTRIES = 1024  # a CT header costs ~60 kB parsed: ~60 MB at most
METADATA_CACHE_BYTES = 64 * 1024 * 1024
BULK_DATA_THRESHOLD_BYTES = 1024
PIXEL_DATA_TAG = 0x7FE00010

# Attributes returned by default at each level (PS3.18 tables 10.6.3-3 to -5), from the header.
STUDY_ATTRIBUTES = (
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID",
    "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
)
# Further patient/study attributes returned with includefield=all.
STUDY_EXTRA_ATTRIBUTES = (
    "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientComments", "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence", "AdmittingDiagnosesDescription", "InstitutionName",
    "RequestingPhysician", "RequestedProcedureDescription",
)
SERIES_ATTRIBUTES = (
    "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
    "SeriesInstanceUID", "SeriesNumber", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "RequestAttributesSequence", "StudyInstanceUID",
    "SeriesDate", "SeriesTime",
)
SERIES_EXTRA_ATTRIBUTES = (
    "BodyPartExamined", "ProtocolName", "Manufacturer", "ManufacturerModelName",
    "StationName", "Laterality", "FrameOfReferenceUID", "OperatorsName",
    "PerformingPhysicianName", "ContentDate", "ContentTime",
)
INSTANCE_ATTRIBUTES = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "TimezoneOffsetFromUTC",
    "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
    "StudyInstanceUID", "SeriesInstanceUID",
)
# Always present in a result, empty when the file lacks them (PS3.18 "required" keys).
REQUIRED_EMPTY = frozenset({
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
    "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "Modality", "SeriesNumber",
    "InstanceNumber",
})


def tag_of(name: str) -> BaseTag | None:
    """The tag of a keyword (``PatientName``) or of 8 hex digits (``00100010``); None if neither."""
    tag = tag_for_keyword(name)
    if tag is not None:
        return Tag(tag)
    if len(name) == 8:
        try:
            return Tag(int(name, 16))
        except ValueError:
            return None
    return None


class HeaderCache:
    """Parsed headers (no pixel data) of files under ``root``, least recently used dropped."""

    def __init__(
        self,
        root: Path,
        max_entries: int = HEADER_CACHE_ENTRIES,
        metadata_bytes: int = METADATA_CACHE_BYTES,
    ) -> None:
        self._root = root
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[tuple[int, int], Dataset]] = OrderedDict()
        self._lock = threading.Lock()
        self._metadata = MetadataCache(metadata_bytes)

    def path(self, relative: str) -> Path:
        return self._root / relative

    def header(self, relative: str) -> Dataset:
        """The header of the file at ``relative``; raises OSError or pydicom's errors."""
        path = self._root / relative
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._entries.get(relative)
            if cached is not None and cached[0] == key:
                self._entries.move_to_end(relative)
                return cached[1]
        ds = dcmread(path, stop_before_pixels=True)
        _convert_all(ds)
        with self._lock:
            self._entries[relative] = (key, ds)
            self._entries.move_to_end(relative)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return ds

    def metadata(self, relative: str, bulk_base: str) -> bytes:
        """The serialised WADO-RS metadata JSON object of one file (see ``metadata_json``)."""
        stat = (self._root / relative).stat()
        key = (relative, bulk_base, stat.st_size, stat.st_mtime_ns)
        cached = self._metadata.get(key)
        if cached is not None:
            return cached
        data = json.dumps(
            metadata_json(self.header(relative), bulk_base), separators=(",", ":")
        ).encode("utf-8")
        self._metadata.put(key, data)
        return data

    def __len__(self) -> int:
        return len(self._entries)


def _convert_all(ds: Dataset) -> None:
    """Turn every raw element into a data element now, so that a cached header shared by
    request threads is only read afterwards, never converted lazily by two at once."""
    try:
        for _ in ds.iterall():
            pass
    except Exception as exc:  # a malformed value: it is converted (or skipped) when used
        log.debug("header not fully converted: %s", exc)


def transfer_syntax_of(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _element(ds: Dataset, tag: BaseTag) -> DataElement | None:
    try:
        return ds[tag] if tag in ds else None
    except Exception:  # a malformed value in the file: leave it out of the answer
        log.debug("element %s cannot be read", tag)
        return None


def select_attributes(ds: Dataset, names: Iterable[str | BaseTag], target: Dataset) -> None:
    """Copy the named elements of ``ds`` into ``target``; required ones missing become empty."""
    for name in names:
        tag = name if isinstance(name, BaseTag) else tag_of(name)
        if tag is None or tag in target:
            continue
        elem = _element(ds, tag)
        if elem is not None:
            target[tag] = copy.copy(elem)  # the cached header's element stays untouched
        elif isinstance(name, str) and name in REQUIRED_EMPTY:
            target.add_new(tag, dictionary_VR(tag), None)


def to_json(ds: Dataset) -> dict[str, Any]:
    """DICOM JSON of a small data set (QIDO attributes): binary values inline."""
    return ds.to_json_dict(suppress_invalid_tags=True)


def metadata_json(ds: Dataset, bulk_base: str) -> dict[str, Any]:
    """WADO-RS metadata of one instance: every attribute of its header, binary values over
    1 KiB and the pixel data as BulkDataURIs ``<bulk_base>/<tag>`` (PS3.18 §8.7.3.5.1)."""

    def bulk_uri(elem: DataElement) -> str:
        return f"{bulk_base}/{int(elem.tag):08X}"

    out = ds.to_json_dict(
        bulk_data_threshold=BULK_DATA_THRESHOLD_BYTES,
        bulk_data_element_handler=bulk_uri,
        suppress_invalid_tags=True,
    )
    transfer_syntax = transfer_syntax_of(ds)
    if transfer_syntax:
        out["00083002"] = {"vr": "UI", "Value": [transfer_syntax]}  # AvailableTransferSyntaxUID
    if "Rows" in ds and "Columns" in ds:
        encapsulated = bool(transfer_syntax) and UID(transfer_syntax).is_encapsulated
        vr = "OB" if encapsulated or int(ds.get("BitsAllocated", 8) or 8) <= 8 else "OW"
        key = f"{PIXEL_DATA_TAG:08X}"
        out[key] = {"vr": vr, "BulkDataURI": f"{bulk_base}/{key}"}
    return out


class MetadataCache:
    """Serialised metadata JSON per (file, bulk base), bounded by total bytes."""

    def __init__(self, max_bytes: int = METADATA_CACHE_BYTES) -> None:
        self._max = max_bytes
        self._size = 0
        self._entries: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int, int]) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple[str, str, int, int], value: bytes) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._entries[key] = value
            self._size += len(value)
            while self._size > self._max and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._size -= len(dropped)


def find_element(ds: Dataset, tag: int) -> DataElement | None:
    """The first element with ``tag``, searching the top level first, then sequences in order."""
    if tag in ds:
        return ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found = find_element(item, tag)
                if found is not None:
                    return found
    return None
