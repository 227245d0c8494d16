"""`dicomnode analyze` on a real study as its authors exported it (broken UIDs), default models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest

from tests.peers.dicom3tools import dciodvfy_errors

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
P002 = REPO.parent / "shared" / "data" / "covid-ct-md" / "series" / "COVID-19" / "P002"
LUNG_ML_RANGE = (800.0, 5000.0)  # one adult lung, generously


def test_analyze_real_study_with_the_default_models(tmp_path: Path) -> None:
    if not P002.is_dir():
        pytest.fail(f"shared data missing: {P002}")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "dicomnode", "analyze", str(P002), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for side in ("left", "right"):
        assert LUNG_ML_RANGE[0] < summary["lungs"][side]["volume_ml"] < LUNG_ML_RANGE[1]
    assert summary["classification"]["label"] in ("covid19", "non-covid")
    assert 0.0 <= summary["classification"]["p_covid"] <= 1.0
    assert summary["lesions"], "the COVID-19 study has lesions"
    seg_path, sr_path = out / "seg.dcm", out / "sr.dcm"
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    seg = hd.seg.segread(seg_path)
    labels = [d.SegmentLabel for d in seg.SegmentSequence]
    assert labels[:2] == ["Left lung", "Right lung"]
    assert len(labels) == 2 + len(summary["lesions"])
    report = hd.sr.srread(sr_path).content
    volumetric = report.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == 2 + len(summary["lesions"])  # two lungs, one group per lesion
    # The classification: study-level qualitative evaluations, one per class, each with the
    # probability the model gave it (pipeline.writers.classification).
    evaluations = sr_evaluations(sr_path)
    assert {"Pneumonia caused by SARS-CoV-2", "Probability"} <= evaluations, evaluations


def test_analyze_normal_study_whose_file_meta_repeats_one_placeholder_uid(tmp_path: Path) -> None:
    normal = REPO.parent / "shared" / "data" / "covid-ct-md" / "series" / "Normal" / "normal002"
    if not normal.is_dir():
        pytest.fail(f"shared data missing: {normal}")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "dicomnode", "analyze", str(normal), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slices"] == 167
    assert 0.0 <= summary["classification"]["p_covid"] <= 1.0


def sr_evaluations(path: Path) -> set[str]:
    """Concept names inside the SR's document-level Qualitative Evaluations container."""
    import pydicom

    names: set[str] = set()

    def walk(items: object, inside: bool) -> None:
        for item in items or []:  # type: ignore[attr-defined]
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if inside:
                names.add(name)
            walk(item.get("ContentSequence"), inside or name == "Qualitative Evaluations")

    walk(pydicom.dcmread(path).ContentSequence, False)
    return names
