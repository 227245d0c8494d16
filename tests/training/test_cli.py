"""The training CLI's make-dicom command writes a readable CT series."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.series import read_series
from training.__main__ import build_parser, main


def test_make_dicom_writes_a_series(tmp_path: Path) -> None:
    out = tmp_path / "series"
    assert main(["make-dicom", "--out", str(out), "--seed", "3", "--kind", "cap",
                 "--matrix", "128", "--slice-spacing", "5"]) == 0
    files = sorted(out.glob("*.dcm"))
    volume = read_series(files)
    assert volume.shape[1:] == (128, 128) and volume.shape[0] == len(files)
    assert volume.spacing_mm[0] == pytest.approx(5.0)


def test_parser_rejects_unknown_kind() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["make-dicom", "--out", "x", "--kind", "flu"])
