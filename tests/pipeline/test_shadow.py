"""The shadow classifier: a registry model run beside the primary on every job, its answer in
the summary only (no result object, so nothing of it is ever exported)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomnode.contracts import ProcessRequest
from pipeline.errors import ModelError
from pipeline.models.registry import get_spec
from pipeline.processor import ChestCTProcessor
from tests.pipeline.conftest import Phantom, slice_datasets, write_datasets

pytestmark = pytest.mark.slow

BASE = {"lung_segmentation": "morphological", "classifier": "none", "localize_lesions": False,
        "overlay": False, "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def phantom_files(chest_phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    volume = chest_phantom.volume
    datasets = slice_datasets(np.clip(volume.hu, -1024.0, 3000.0), volume.spacing_mm,
                              uid_root="shadow-phantom")
    return write_datasets(datasets, tmp_path_factory.mktemp("shadow-series"))


def test_the_shadow_answer_is_summarised_and_never_a_result_object(
    phantom_files: list[Path], tmp_path: Path
) -> None:
    version = get_spec("decovnet").version
    processor = ChestCTProcessor({**BASE, "shadow_classifier": f"decovnet@{version}"})
    outcome = processor.process(ProcessRequest(job_id=1, files=tuple(phantom_files),
                                               out_dir=tmp_path, uid_root="2.25.77"))
    assert [obj.kind for obj in outcome.objects] == ["SEG", "SR"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "sr.dcm"]
    shadow = outcome.summary["shadow"]
    assert shadow["model"]["name"] == "decovnet" and shadow["model"]["version"] == version
    assert shadow["label"] in shadow["probabilities"] and 0.0 <= shadow["p_covid"] <= 1.0
    assert outcome.summary["classification"] is None  # the primary is still "none"
    assert "shadow" in outcome.summary["timings_s"]


def test_a_promoted_primary_replaces_the_configured_classifier(
    phantom_files: list[Path], tmp_path: Path
) -> None:
    version = get_spec("decovnet").version
    processor = ChestCTProcessor({**BASE, "primary_classifier": f"decovnet@{version}",
                                  "shadow_classifier": f"decovnet@{version}"})
    outcome = processor.process(ProcessRequest(job_id=2, files=tuple(phantom_files),
                                               out_dir=tmp_path, uid_root="2.25.78"))
    assert outcome.summary["classification"]["model"]["name"] == "decovnet"
    assert "shadow" not in outcome.summary  # the shadow became the primary: not run twice


@pytest.mark.parametrize("ref", ["decovnet@0.0-none", "unet2d-lungs@1.1.0-synthetic", "nope"])
def test_unknown_versions_and_non_classifiers_are_refused(ref: str) -> None:
    with pytest.raises(ModelError):
        ChestCTProcessor({**BASE, "shadow_classifier": ref})
