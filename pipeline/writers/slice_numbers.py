"""Slice numbers as a viewer shows them for the images of a series.

The pipeline indexes slices along the slice normal (``CTVolume.datasets``, ascending
position), but a viewer numbers the images of a stack by Instance Number: OHIF, for one, shows
image 71 of 133 for the slice that is ``z = 62`` here when the instance numbers run from head to
feet (as on the COVID-CT-MD scanner). Burned-in text that names a slice must use the viewer's
number, and the overlay series is written in the same order, so both series scroll alike.

``viewer_positions`` gives, for every z index, the 1-based position of that image in the
series sorted by Instance Number. When the Instance Numbers cannot order the series (one is
missing, unreadable or repeated), no viewer order is known and the position along the slice
normal (z + 1) is used.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset


def instance_number(ds: Dataset) -> int | None:
    """The dataset's Instance Number, or None when it is missing or not an integer."""
    value = ds.get("InstanceNumber")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def viewer_positions(datasets: Sequence[Dataset]) -> list[int]:
    """1-based viewer position of each dataset (index = z); see the module docstring."""
    numbers = [instance_number(ds) for ds in datasets]
    known = [n for n in numbers if n is not None]
    if len(known) != len(numbers) or len(set(known)) != len(known):
        return list(range(1, len(datasets) + 1))
    order = sorted(range(len(known)), key=lambda z: known[z])
    positions = [0] * len(known)
    for rank, z in enumerate(order, start=1):
        positions[z] = rank
    return positions


def instance_label(ds: Dataset, z: int) -> int:
    """The Instance Number a viewer shows for the image at ``z`` (z + 1 when it has none)."""
    number = instance_number(ds)
    return z + 1 if number is None else number
