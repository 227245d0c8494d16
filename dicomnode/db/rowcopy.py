"""One way to turn ORM rows into the plain frozen records the node hands around."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

R = TypeVar("R")


def record_from(record: type[R], *rows: object, **given: Any) -> R:
    """Build the dataclass ``record``: each field named in ``given`` takes that value, every
    other field the attribute of the same name on the first of ``rows`` that has one (the order
    of ``rows`` decides between like-named columns); a field found nowhere keeps its default.

    Raises TypeError naming the field when one without a default is found nowhere, and when
    ``given`` names a field the record does not have."""
    fields = dataclasses.fields(record)  # type: ignore[arg-type]
    unknown = set(given) - {f.name for f in fields}
    if unknown:
        raise TypeError(f"{record.__name__} has no field(s) {', '.join(sorted(unknown))}")
    values = dict(given)
    for f in fields:
        if f.name in values:
            continue
        for row in rows:
            if hasattr(row, f.name):
                values[f.name] = getattr(row, f.name)
                break
        else:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TypeError(f"{record.__name__}.{f.name} is on none of the rows given")
    return record(**values)
