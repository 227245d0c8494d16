"""ChestCTProcessor and analyze_files: the node's processor interface, end to end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.contracts import PriorReport, ProcessOutcome, ProcessRequest, ResultFile
from dicomnode.jobs.processing import Processor, load_processor
from pipeline import processor as processor_module
from pipeline.errors import ModelError, SeriesError
from pipeline.processor import SUMMARY_FILE_NAME, ChestCTProcessor, analyze_files
from tests.peers.dicom3tools import dciodvfy_errors
from tests.peers.studies import PreparedSeries
from tests.pipeline.conftest import Phantom, slice_datasets, write_datasets

MORPHOLOGY_ONLY = {
    "lung_segmentation": "morphological", "classifier": "none", "localize_lesions": False,
    "overlay": False,
}


@pytest.fixture(scope="module")
def phantom_files(chest_phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    volume = chest_phantom.volume
    datasets = slice_datasets(
        np.clip(volume.hu, -1024.0, 3000.0), volume.spacing_mm, uid_root="processor-phantom"
    )
    return write_datasets(datasets, tmp_path_factory.mktemp("phantom-series"))


@pytest.fixture(scope="module")
def processor() -> ChestCTProcessor:
    return ChestCTProcessor(MORPHOLOGY_ONLY)


def _request(files: list[Path], out_dir: Path, uid_root: str = "2.25.4242") -> ProcessRequest:
    return ProcessRequest(job_id=7, files=tuple(files), out_dir=out_dir, uid_root=uid_root)


def test_processor_satisfies_the_node_interface() -> None:
    loaded = load_processor("pipeline.processor:ChestCTProcessor", MORPHOLOGY_ONLY)
    assert isinstance(loaded, Processor)
    assert isinstance(loaded, ChestCTProcessor)
    assert [m.name for m in loaded.algorithms] == ["morphological-lung"]


def test_process_writes_seg_and_sr_and_a_json_summary(
    processor: ChestCTProcessor, phantom_files: list[Path], chest_phantom: Phantom, tmp_path: Path
) -> None:
    prior = PriorReport("2.25.1", "2.25.2", "2.25.3", pydicom.uid.Comprehensive3DSRStorage)
    request = ProcessRequest(
        job_id=7, files=tuple(phantom_files), out_dir=tmp_path, uid_root="2.25.4242",
        predecessors=(prior,),
    )
    outcome = processor.process(request)
    assert isinstance(outcome, ProcessOutcome)
    assert [obj.kind for obj in outcome.objects] == ["SEG", "SR"]
    for obj in outcome.objects:
        assert isinstance(obj, ResultFile)
        assert obj.path.parent == tmp_path and dciodvfy_errors(obj.path) == []
    sr = pydicom.dcmread(outcome.objects[1].path)
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == (
        "2.25.2"
    )
    summary = json.loads(json.dumps(outcome.summary, allow_nan=False))
    truth_ml = {
        "left": chest_phantom.left.sum() * chest_phantom.volume.voxel_volume_ml,
        "right": chest_phantom.right.sum() * chest_phantom.volume.voxel_volume_ml,
    }
    for side in ("left", "right"):
        assert summary["lungs"][side]["volume_ml"] == pytest.approx(truth_ml[side], rel=0.05)
        assert summary["lungs"][side]["mean_hu"] < -700.0
        assert summary["lungs"][side]["lesion_burden_percent"] is None
    assert summary["classification"] is None and summary["lesions"] == []
    assert {"read", "lungs", "stats", "write", "total"} <= set(summary["timings_s"])
    assert summary["algorithms"][0]["name"] == "morphological-lung"
    assert [o["sop_instance_uid"] for o in summary["objects"]] == [
        o.sop_instance_uid for o in outcome.objects
    ]


def test_processing_twice_with_the_same_uid_root_gives_the_same_uids(
    processor: ChestCTProcessor, phantom_files: list[Path], tmp_path: Path
) -> None:
    first = processor.process(_request(phantom_files, tmp_path / "first"))
    second = processor.process(_request(phantom_files, tmp_path / "second"))
    third = processor.process(_request(phantom_files, tmp_path / "third", "2.25.999"))
    uids = [o.sop_instance_uid for o in first.objects]
    assert uids == [o.sop_instance_uid for o in second.objects]
    assert not set(uids) & {o.sop_instance_uid for o in third.objects}
    seg_first = pydicom.dcmread(tmp_path / "first" / "seg.dcm")
    seg_second = pydicom.dcmread(tmp_path / "second" / "seg.dcm")
    assert seg_first.PixelData == seg_second.PixelData
    assert seg_first.SegmentSequence == seg_second.SegmentSequence


def test_bad_input_raises_a_series_error(processor: ChestCTProcessor, tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(SeriesError):
        processor.process(_request([tmp_path / "junk.dcm"], tmp_path / "out"))


@pytest.mark.parametrize(
    "settings",
    [
        {"classifier": "resnet", "lung_segmentation": "morphological"},
        {"classifier": "none", "lung_segmentation": "watershed"},
        {"classifier": "none", "lung_segmentation": "morphological", "threads": -1},
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ChestCTProcessor(settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"lung_segmentation": "unet", "classifier": "none"},
        {"lung_segmentation": "morphological", "classifier": "decovnet"},
        {"lung_segmentation": "morphological", "classifier": "cnn-bert"},
    ],
)
def test_missing_model_stage_raises_model_error(
    settings: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = processor_module.importlib.import_module

    def no_model_stages(name: str) -> object:
        if name in ("pipeline.stages.lung_unet", "pipeline.stages.classify"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name)

    monkeypatch.setattr(processor_module.importlib, "import_module", no_model_stages)
    with pytest.raises(ModelError, match="is not available"):
        ChestCTProcessor(settings)


@pytest.mark.slow
def test_model_stages_without_weights_raise_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHESTCT_WEIGHTS_DIR", str(tmp_path))
    for settings in (
        {"lung_segmentation": "unet", "classifier": "none", "device": "cpu"},
        {"lung_segmentation": "morphological", "classifier": "decovnet", "device": "cpu"},
    ):
        with pytest.raises(ModelError):
            ChestCTProcessor(settings)


def test_analyze_files_repairs_uids_and_is_repeatable(
    phantom_files: list[Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in phantom_files:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ""
        ds.FrameOfReferenceUID = ""
        ds.SeriesInstanceUID = "09bc8aea-ff9c-4106-8514-294cbcf9a082"
        del ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(broken / path.name)
    files = sorted(broken.iterdir())
    first = analyze_files(files, tmp_path / "out1", MORPHOLOGY_ONLY)
    second = analyze_files(files, tmp_path / "out2", MORPHOLOGY_ONLY)
    assert [o.sop_instance_uid for o in first.objects] == [
        o.sop_instance_uid for o in second.objects
    ]
    summary = json.loads((tmp_path / "out1" / SUMMARY_FILE_NAME).read_text())
    assert summary["series_instance_uid"] == "2.25.12942021362491699725065559023791218818"
    for obj in first.objects:
        assert dciodvfy_errors(obj.path) == []


@pytest.mark.slow
def test_analyze_files_on_the_covid_study(covid_files: list[Path], tmp_path: Path) -> None:
    outcome = analyze_files(covid_files, tmp_path, MORPHOLOGY_ONLY)
    assert {p.name for p in tmp_path.iterdir()} == {"seg.dcm", "sr.dcm", SUMMARY_FILE_NAME}
    for obj in outcome.objects:
        assert dciodvfy_errors(obj.path) == []
    summary = json.loads((tmp_path / SUMMARY_FILE_NAME).read_text())
    assert summary["slices"] == 133
    assert 2000.0 < summary["total_lung_volume_ml"] < 8000.0
    print("P002 analyze timings:", summary["timings_s"])


@pytest.mark.slow
def test_process_on_the_covid_study_with_valid_uids(
    covid_study: PreparedSeries, processor: ChestCTProcessor, tmp_path: Path
) -> None:
    outcome = processor.process(_request(list(covid_study.files), tmp_path))
    seg = pydicom.dcmread(outcome.objects[0].path, stop_before_pixels=True)
    assert seg.StudyInstanceUID == covid_study.study_instance_uid
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == covid_study.series_instance_uid
    assert len(referenced.ReferencedInstanceSequence) == len(covid_study.files)
    assert outcome.summary["lungs"]["right"]["volume_ml"] > outcome.summary["lungs"]["left"][
        "volume_ml"
    ]


def test_overlay_slot_adds_the_overlay_series(
    phantom_files: list[Path], tmp_path: Path
) -> None:
    with_overlay = ChestCTProcessor({**MORPHOLOGY_ONLY, "overlay": True})
    outcome = with_overlay.process(_request(phantom_files, tmp_path))
    kinds = [obj.kind for obj in outcome.objects]
    assert kinds[:2] == ["SEG", "SR"] and kinds.count("OVERLAY") >= 1
    overlay_series = {o.series_instance_uid for o in outcome.objects if o.kind == "OVERLAY"}
    assert len(overlay_series) == 1
    assert all(o.path.is_file() for o in outcome.objects)


def test_seg_and_sr_are_handed_off_before_the_overlay_is_rendered(
    phantom_files: list[Path], tmp_path: Path
) -> None:
    """The hand-off gets complete SEG and SR files while no overlay file exists yet."""
    handed: list[tuple[list[str], list[str]]] = []

    def handoff(objects: Sequence[ResultFile]) -> None:
        assert all(pydicom.dcmread(o.path).SOPInstanceUID == o.sop_instance_uid for o in objects)
        handed.append(([o.kind for o in objects], sorted(p.name for p in tmp_path.iterdir())))

    with_overlay = ChestCTProcessor({**MORPHOLOGY_ONLY, "overlay": True})
    request = replace(_request(phantom_files, tmp_path), handoff=handoff)
    outcome = with_overlay.process(request)
    [(kinds, files_then)] = handed
    assert kinds == ["SEG", "SR"] and files_then == ["seg.dcm", "sr.dcm"]
    assert [o.kind for o in outcome.objects][:2] == kinds
    assert sum(o.kind == "OVERLAY" for o in outcome.objects) >= 1
    timings = outcome.summary["timings_s"]
    assert {"write", "handoff", "overlay"} <= set(timings)
    assert outcome.summary["handed_off_after_s"] == pytest.approx(
        timings["total"] - timings["overlay"], abs=0.01)
