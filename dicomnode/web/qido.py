"""QIDO-RS query parameters and attribute matching (PS3.18 §8.3.4, PS3.4 §C.2.2.2).

Supported: single value matching, list of UID matching (``\\`` or ``,`` separated), wildcard
matching with ``*`` and ``?``, date/time range matching (``20200101-20201231``, open ends),
universal matching (empty value), ``includefield`` (``all``, keywords or tags, repeated or
comma-separated), ``limit`` and ``offset``. Text comparisons ignore case, which is what a person
typing a name into OHIF's study list expects. Sequence matching is not supported: such a
filter is ignored (and named in the response's Warning header).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from dicomnode.web.dicomjson import tag_of

# Query parameters that are not attribute filters (``token`` is the web app's own login).
CONTROL_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield", "token", "_"})
MAX_LIMIT = 10_000
_RANGE_VRS = frozenset({"DA", "TM", "DT"})


@dataclass(frozen=True)
class QidoQuery:
    filters: tuple[tuple[BaseTag, str], ...]
    include_all: bool
    include: tuple[BaseTag, ...]
    limit: int | None
    offset: int
    ignored: tuple[str, ...]  # parameters not understood (sequence paths, unknown names)

    def filter_value(self, tag: int) -> str | None:
        for t, value in self.filters:
            if t == tag:
                return value
        return None


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, not {value!r}") from exc
    if number < 0:
        raise ValueError(f"{name} must not be negative")
    return number


def parse_query(params: Sequence[tuple[str, str]]) -> QidoQuery:
    """Split query parameters into filters, includefields and paging; ValueError when bad."""
    filters: list[tuple[BaseTag, str]] = []
    include: list[BaseTag] = []
    include_all = False
    limit: int | None = None
    offset = 0
    ignored: list[str] = []
    for name, value in params:
        if name == "limit":
            limit = min(_non_negative("limit", value), MAX_LIMIT)
        elif name == "offset":
            offset = _non_negative("offset", value)
        elif name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item.lower() == "all":
                    include_all = True
                    continue
                tag = tag_of(item)
                if tag is None:
                    ignored.append(item)
                else:
                    include.append(tag)
        elif name in CONTROL_PARAMS:
            continue
        else:
            tag = tag_of(name)
            if tag is None or dictionary_VR(tag) == "SQ":
                ignored.append(name)
            else:
                filters.append((tag, value))
    return QidoQuery(tuple(filters), include_all, tuple(include), limit, offset, tuple(ignored))


def split_values(value: str) -> list[str]:
    """The values of a list match: separated by backslashes or commas."""
    return [v.strip() for v in re.split(r"[\\,]", value) if v.strip()]


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _texts(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _in_range(candidate: str, low: str, high: str) -> bool:
    candidate = candidate.replace(":", "")
    if low and candidate[: len(low)] < low:
        return False
    if high and candidate[: len(high)] > high:
        return False
    return True


def value_matches(vr: str, values: Iterable[str], wanted: str) -> bool:
    """Whether any of an attribute's ``values`` matches the query value ``wanted``."""
    values = list(values)
    if vr == "UI":
        requested = set(split_values(wanted))
        return any(v in requested for v in values)
    if vr in _RANGE_VRS:
        wanted = wanted.replace(":", "")
        if "-" in wanted:
            low, _, high = wanted.partition("-")
            return any(_in_range(v, low.strip(), high.strip()) for v in values)
        return any(v.replace(":", "").startswith(wanted) for v in values)
    options = split_values(wanted) if vr == "CS" else wanted.split("\\")
    for option in options:
        if "*" in option or "?" in option:
            pattern = _wildcard(option)
            if any(pattern.fullmatch(v) for v in values):
                return True
        elif any(v.casefold() == option.casefold() for v in values):
            return True
    return False


def matches(ds: Dataset, filters: Iterable[tuple[BaseTag, str]]) -> bool:
    """Whether the attributes in ``ds`` satisfy every filter (an empty value matches all)."""
    for tag, wanted in filters:
        if wanted == "" or wanted == "*":
            continue
        elem = ds.get(tag)
        if elem is None:
            return False
        if not value_matches(elem.VR, _texts(elem.value), wanted):
            return False
    return True
