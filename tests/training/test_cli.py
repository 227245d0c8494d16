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


@pytest.mark.slow
def test_validate_commands_score_checkpoints_on_the_val_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cache import make_cases
    from training.train_decovnet import prepare_split, train_decovnet
    from training.train_unet import build_slice_set, train_unet

    cases = make_cases(tmp_path, "val", 3, matrix=96, slice_spacing_mm=4.0,
                       kinds=("covid", "normal"))
    slices = build_slice_set(cases, [], seed=0, slices_per_case=4)
    train_unet(slices, tmp_path / "checkpoints" / "unet.pt", max_steps=1, max_minutes=1, batch=4)
    inputs = prepare_split(tmp_path, "val", cases, (32, 48), seed=0)
    train_decovnet(inputs, tmp_path / "checkpoints" / "dec.pt", max_steps=1, max_minutes=1,
                   window_slices=8)
    capsys.readouterr()
    assert main(["validate-unet", "unet", "--work-dir", str(tmp_path), "--cases", "3"]) == 0
    out = capsys.readouterr().out
    assert "unet: validation n=3 lung Dice mean" in out and "normal" in out
    assert main(["validate-decovnet", "dec", "--work-dir", str(tmp_path), "--cases", "3",
                 "--crop-h", "32", "--crop-w", "48"]) == 0
    out = capsys.readouterr().out
    assert "dec: step 1, validation n=3 AUC" in out and "(2 COVID cases)" in out
