"""PipelineRunner: stage order and timings, stage slots, result objects and their UIDs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from dicomnode.contracts import ResultFile
from pipeline.runner import PipelineRunner, write_results
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from pipeline.types import Classification, CTVolume, Lesion, LungMask, ModelInfo, StudyResult
from tests.peers.dicom3tools import dciodvfy_errors
from tests.pipeline.conftest import Phantom, make_result, sphere_lesion


class RecordingLungs:
    """Wraps the morphological segmenter and records the call order."""

    def __init__(self, calls: list[str]) -> None:
        self._inner = MorphologicalLungSegmenter()
        self._calls = calls

    @property
    def info(self) -> ModelInfo:
        return self._inner.info

    def segment(self, volume: CTVolume) -> LungMask:
        self._calls.append("lungs")
        return self._inner.segment(volume)


class FixedClassifier:
    def __init__(self, calls: list[str]) -> None:
        self._calls = calls

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("fixed-classifier", "1.0", "c" * 64)

    def classify(self, volume: CTVolume, lungs: LungMask) -> Classification:
        self._calls.append("classify")
        assert lungs.left.shape == volume.shape
        return Classification(
            label="covid19",
            probabilities={"covid19": 0.9, "non-covid": 0.1},
            p_covid=0.9,
            embedding=np.ones(8, dtype=np.float32),
            model=self.info,
        )


class SphereLocalizer:
    def __init__(self, calls: list[str]) -> None:
        self._calls = calls

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("sphere-localizer", "1.0", "d" * 64)

    def localize(
        self, volume: CTVolume, lungs: LungMask, classification: Classification | None
    ) -> tuple[Lesion, ...]:
        self._calls.append("localize")
        assert classification is None or classification.label == "covid19"
        return (sphere_lesion(volume, lungs, 1, (42.0, 0.0, 0.0), 10.0),)


class RecordingOverlay:
    def __init__(self) -> None:
        self.calls: list[tuple[Path, str]] = []

    def write(self, result: StudyResult, out_dir: Path, uid_root: str) -> Sequence[ResultFile]:
        self.calls.append((out_dir, uid_root))
        return []


def test_run_calls_the_stages_in_order_and_times_them(chest_phantom: Phantom) -> None:
    calls: list[str] = []
    runner = PipelineRunner(
        RecordingLungs(calls), FixedClassifier(calls), SphereLocalizer(calls)
    )
    result = runner.run(chest_phantom.volume)
    assert calls == ["lungs", "classify", "localize"]
    assert set(result.timings_s) == {"lungs", "classify", "localize", "stats"}
    assert all(seconds >= 0.0 for seconds in result.timings_s.values())
    assert [m.name for m in result.algorithms] == [
        "morphological-lung", "fixed-classifier", "sphere-localizer"
    ]
    assert result.classification is not None and result.classification.p_covid == 0.9
    assert len(result.lesions) == 1
    left = {s.side: s for s in result.lung_stats}["left"]
    assert left.lesion_burden_percent is not None and left.lesion_burden_percent > 0.0
    assert {s.side: s for s in result.lung_stats}["right"].lesion_burden_percent == 0.0


def test_run_with_lungs_only(chest_phantom: Phantom) -> None:
    calls: list[str] = []
    result = PipelineRunner(RecordingLungs(calls)).run(chest_phantom.volume)
    assert calls == ["lungs"]
    assert result.classification is None and result.lesions == ()
    assert all(s.lesion_burden_percent is None for s in result.lung_stats)


def test_localizer_without_classifier_gets_no_classification(chest_phantom: Phantom) -> None:
    calls: list[str] = []
    result = PipelineRunner(RecordingLungs(calls), None, SphereLocalizer(calls)).run(
        chest_phantom.volume
    )
    assert calls == ["lungs", "localize"]
    assert result.classification is None and len(result.lesions) == 1


def test_write_results_writes_seg_and_sr_with_deterministic_uids(
    chest_phantom: Phantom, tmp_path: Path
) -> None:
    calls: list[str] = []
    overlay = RecordingOverlay()
    runner = PipelineRunner(
        RecordingLungs(calls), FixedClassifier(calls), SphereLocalizer(calls), overlay
    )
    result = runner.run(chest_phantom.volume)
    first = runner.write_results(result, tmp_path / "a", "2.25.5555")
    again = runner.write_results(result, tmp_path / "b", "2.25.5555")
    other = runner.write_results(result, tmp_path / "c", "2.25.6666")
    assert [obj.kind for obj in first] == ["SEG", "SR", "SR"]  # the report + viewer outlines
    assert overlay.calls == [
        (tmp_path / "a", "2.25.5555"), (tmp_path / "b", "2.25.5555"), (tmp_path / "c", "2.25.6666")
    ]
    for obj in first:
        assert obj.path.is_file() and dciodvfy_errors(obj.path) == []
        ds = pydicom.dcmread(obj.path, stop_before_pixels=True)
        assert (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID) == (
            obj.sop_instance_uid, obj.series_instance_uid, obj.sop_class_uid
        )
    uids = [(o.sop_instance_uid, o.series_instance_uid) for o in first]
    assert uids == [(o.sop_instance_uid, o.series_instance_uid) for o in again]
    assert not set(uids) & {(o.sop_instance_uid, o.series_instance_uid) for o in other}
    assert len({uid for pair in uids for uid in pair}) == 6


def test_write_results_with_nothing_found_writes_nothing(
    chest_phantom: Phantom, tmp_path: Path
) -> None:
    empty = np.zeros(chest_phantom.volume.shape, dtype=bool)
    result = make_result(
        chest_phantom.volume, LungMask(empty, empty, "morphological-lung@1.0.0"),
        classification=False,
    )
    assert write_results(result, tmp_path, "2.25.7777") == []
    assert list(tmp_path.iterdir()) == []
