"""The evaluation runs the production stages with the shipped weights and writes a report."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cache import make_cases
from training.evaluate import evaluate_all
from training.report import write_report


@pytest.mark.slow
def test_evaluate_and_report_on_small_phantoms(tmp_path: Path) -> None:
    # seeds 900000 and 900002 are COVID-like, 900003 normal
    make_cases(tmp_path, "test", 3, matrix=128, slice_spacing_mm=3.0, kinds=("covid", "normal"))
    results = evaluate_all(tmp_path, None, 3, None, real=False)
    rows = results["phantoms"]
    assert [r["kind"] for r in rows] == ["covid", "covid", "normal"]
    assert results["classification"]["n"] == 3 and results["classification"]["n_covid"] == 2
    assert all(0.0 <= r["p_covid"] <= 1.0 for r in rows)
    assert all(0.0 < r["dice_unet_both"] <= 1.0 for r in rows)
    methods = [r["lesion_method"] for r in rows[:2]]
    assert set(methods) <= {"cam", "intensity", "none"}
    assert results["localization"]["cam_share"] == pytest.approx(methods.count("cam") / 2)
    res = results["lungs"]["unet_resolution"]
    assert res["n"] == 3
    # the three U-Net runs each give a real overlap with the ground truth
    for key in ("dice_fast_mean", "dice_every_slice_mean", "dice_full_resolution_mean"):
        assert 0.0 < res[key] <= 1.0
    assert rows[0]["unet_resolution"]["dice_fast"] == pytest.approx(rows[0]["dice_unet_both"])
    path = write_report(results, tmp_path / "report", tmp_path, notes=["A note."])
    text = path.read_text()
    assert "## Summary against the goals" in text and "A note." in text
    assert "every slice, full resolution" in text
    assert f"{results['classification']['roc_auc']:.3f}" in text
    assert (tmp_path / "report" / "roc.png").exists()
