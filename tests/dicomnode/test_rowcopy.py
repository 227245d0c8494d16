"""record_from: the one builder of view records and tickets from ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from dicomnode.db.rowcopy import record_from


@dataclass(frozen=True)
class Pair:
    name: str
    kind: str
    count: int
    note: str = "none"


def test_fields_come_from_the_first_row_that_has_them_and_given_values_win() -> None:
    first = SimpleNamespace(name="from first", count=3)
    second = SimpleNamespace(name="from second", kind="SEG", note="kept")
    assert record_from(Pair, first, second) == Pair("from first", "SEG", 3, "kept")
    assert record_from(Pair, second, first, count=9) == Pair("from second", "SEG", 9, "kept")


def test_a_missing_field_keeps_its_default_or_is_named_in_the_error() -> None:
    assert record_from(Pair, SimpleNamespace(name="a", kind="SR", count=1)).note == "none"
    with pytest.raises(TypeError, match=r"Pair\.count"):
        record_from(Pair, SimpleNamespace(name="a", kind="SR"))
    with pytest.raises(TypeError, match="no field.*colour"):
        record_from(Pair, SimpleNamespace(name="a", kind="SR", count=1), colour="red")
