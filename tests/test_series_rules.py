"""One set of stack rules: the node's series selection and the pipeline's reader agree on every
series, because both run ``dicomnode.contracts.stack``.

Each case is a synthetic stack of real CT datasets; the selection sees only the header values
the receiver stores (``instance_record``), the reader decodes the datasets themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from dicomnode.config import SelectionSettings
from dicomnode.contracts.stack import DUPLICATE_POSITION_MM, SliceGeometry, StackError, check_stack
from dicomnode.jobs.selection import InstanceGeometry, SeriesCandidate, assess
from dicomnode.receiving.headers import instance_record
from pipeline.errors import SeriesError
from pipeline.series import volume_from_datasets
from tests.pipeline.conftest import slice_datasets

SLICES = 12
RULES = SelectionSettings(min_slices=10)


def _stack() -> list[Dataset]:
    hu = np.full((SLICES, 32, 32), -800.0, dtype=np.float32)
    hu += np.arange(SLICES, dtype=np.float32)[:, None, None]
    return slice_datasets(hu)


def _copy_of(ds: Dataset, number: int, dz: float = 0.0) -> Dataset:
    twin = copy.deepcopy(ds)
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    twin.InstanceNumber = number
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    twin.ImagePositionPatient = [x, y, z + dz]
    return twin


def regular(ds: list[Dataset]) -> list[Dataset]:
    return ds


def one_slice_sent_twice(ds: list[Dataset]) -> list[Dataset]:
    # within the shared tolerance, though 5x the reader's old one (0.001 mm)
    return [*ds, _copy_of(ds[4], 99, dz=DUPLICATE_POSITION_MM / 2)]


def two_phases(ds: list[Dataset]) -> list[Dataset]:
    return [*ds, *(_copy_of(d, 100 + i) for i, d in enumerate(ds))]


def sheared(ds: list[Dataset]) -> list[Dataset]:
    for index, d in enumerate(ds):
        x, _, z = (float(v) for v in d.ImagePositionPatient)
        d.ImagePositionPatient = [x, 0.5 * index, z]
    return ds


def missing_slice(ds: list[Dataset]) -> list[Dataset]:
    return ds[:5] + ds[6:]


CASES: dict[str, tuple[Callable[[list[Dataset]], list[Dataset]], str | None]] = {
    "regular": (regular, None),
    "one slice sent twice": (one_slice_sent_twice, None),
    "two phases": (two_phases, "duplicate slice positions"),
    "sheared": (sheared, "drift"),
    "missing slice": (missing_slice, "1 slice(s) missing"),
}


def _selection_reason(datasets: list[Dataset]) -> tuple[bool, str]:
    insts = tuple(
        InstanceGeometry.of(instance_record(
            ds, sop_class_uid=str(ds.SOPClassUID), transfer_syntax_uid="", path="x",
            size_bytes=0,
        ))
        for ds in datasets
    )
    verdict = assess(SeriesCandidate("1.2.3", "CT", "Chest", insts), RULES)
    return verdict.eligible, verdict.reason


@pytest.mark.parametrize("case", sorted(CASES))
def test_selection_and_reader_agree(case: str) -> None:
    make, refusal = CASES[case]
    eligible, reason = _selection_reason(make(_stack()))
    if refusal is None:
        assert eligible, reason
        volume = volume_from_datasets(make(_stack()))
        assert volume.shape[0] == SLICES
        assert f"{SLICES} axial slices" in reason
    else:
        assert not eligible and refusal in reason
        with pytest.raises(SeriesError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
            volume_from_datasets(make(_stack()))


def _plain(z: float, number: int, x: float = 0.0) -> SliceGeometry:
    return SliceGeometry((x, 0.0, z), (1, 0, 0, 0, 1, 0), 64, 64, (0.8, 0.8), number)


def test_a_repeated_position_keeps_the_lowest_instance_number() -> None:
    slices = [_plain(2.0 * i, i + 1) for i in range(10)] + [_plain(8.0, 50)]
    stack = check_stack(slices, min_slices=10, spacing_tolerance=0.1)
    assert stack.dropped == (10,)
    assert stack.order == tuple(range(10))
    assert stack.slice_spacing_mm == pytest.approx(2.0)
    assert stack.coverage_mm == pytest.approx(20.0)


def test_drift_below_half_a_pixel_is_accepted_and_above_refused() -> None:
    small = [_plain(2.0 * i, i + 1, x=0.03 * i) for i in range(10)]  # 0.27 mm < 0.4 mm
    assert check_stack(small, min_slices=10, spacing_tolerance=0.1).order[0] == 0
    large = [_plain(2.0 * i, i + 1, x=0.05 * i) for i in range(10)]  # 0.45 mm > 0.4 mm
    with pytest.raises(StackError, match="drift 0.6 pixels"):
        check_stack(large, min_slices=10, spacing_tolerance=0.1)
