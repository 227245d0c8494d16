"""Conformance evidence for the result objects, on a real CT study (COVID-CT-MD P002).

Two runs, each over the real series with valid UIDs (the ``covid_study`` fixture):

- ``processor``: the node's processor (``ChestCTProcessor``, morphological lungs, no
  classifier, overlay on) through ``process``, exactly as the worker calls it;
- ``lesions``: the same runner with the real lung stage and overlay writer, and two fixed test
  stages (a classifier with set probabilities, a localizer placing one sphere in each lung) so
  that lesion groups, probabilities and the viewer SR are written from real geometry.

Every object written must pass ``dciodvfy`` (no ``Error`` line) and ``dcentvfy`` across the
source series and all results; the main SR must render with dcmtk and hold the expected content
tree; the SEG must equal the pipeline's masks voxel for voxel. Missing tools fail the tests.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from scipy import ndimage
from skimage.measure import points_in_poly

from dicomnode.contracts import ProcessRequest
from pipeline.processor import ChestCTProcessor, ProcessorConfig, build_runner
from pipeline.runner import PipelineRunner
from pipeline.series import read_series
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from pipeline.types import Classification, CTVolume, Lesion, LungMask, ModelInfo, StudyResult
from pipeline.writers import codes
from pipeline.writers.equipment import algorithm_device_uid
from pipeline.writers.overlay import SecondaryCaptureOverlay
from pipeline.writers.seg import lesion_model, lung_model
from pipeline.writers.sr import DEVICE_OBSERVER_NAME, DEVICE_OBSERVER_UID
from pipeline.writers.viewer_sr import CORNERSTONE_FREEHAND_TRACKING_ID, VIEWER_SR_SERIES_NUMBER
from tests.peers.dicom3tools import dcentvfy_errors, dciodvfy_errors
from tests.peers.processes import MissingPeerError, find_tool
from tests.peers.studies import PreparedSeries
from tests.pipeline.conftest import sphere_lesion

pytestmark = pytest.mark.slow

MORPHOLOGY_SETTINGS = {
    "lung_segmentation": "morphological", "classifier": "none", "localize_lesions": False,
    "overlay": True,
}
PROCESSOR_UID_ROOT = "2.25.90210001"
LESIONS_UID_ROOT = "2.25.90210002"
TEST_LESION_RADIUS_MM = 15.0
FIXED_CLASSIFIER = ModelInfo("fixed-test-classifier", "1.0.0", "c" * 64)
FIXED_LOCALIZER = ModelInfo("fixed-test-localizer", "1.0.0", "d" * 64)
RUNS = ("processor", "lesions")


class FixedClassifier:
    """Test stage: always COVID-19 with probability 0.8."""

    @property
    def info(self) -> ModelInfo:
        return FIXED_CLASSIFIER

    def classify(self, volume: CTVolume, lungs: LungMask) -> Classification:
        return Classification(
            label="covid19",
            probabilities={"non-covid": 0.2, "covid19": 0.8},
            p_covid=0.8,
            embedding=np.zeros(8, dtype=np.float32),
            model=FIXED_CLASSIFIER,
        )


class LungCentreLocalizer:
    """Test stage: one sphere in each lung, centred where that lung is thickest on the slice
    where it is largest (so the sphere lies well inside the real lung)."""

    @property
    def info(self) -> ModelInfo:
        return FIXED_LOCALIZER

    def localize(
        self, volume: CTVolume, lungs: LungMask, classification: Classification
    ) -> tuple[Lesion, ...]:
        lesions = []
        for number, mask in enumerate((lungs.right, lungs.left), start=1):
            z = int(np.argmax(mask.sum(axis=(1, 2))))
            depth = ndimage.distance_transform_edt(mask[z], sampling=volume.spacing_mm[1:])
            row, column = np.unravel_index(int(np.argmax(depth)), depth.shape)
            centre = volume.index_to_lps(np.array([[z, row, column]], dtype=np.float64))[0]
            lesions.append(sphere_lesion(volume, lungs, number, centre, TEST_LESION_RADIUS_MM))
        return tuple(lesions)


@dataclass(frozen=True)
class ResultRun:
    """What one run wrote and the stage outputs it was written from."""

    name: str
    study: PreparedSeries
    result: StudyResult
    paths: tuple[Path, ...]
    kinds: tuple[str, ...]

    def of_kind(self, kind: str) -> list[Path]:
        return [p for p, k in zip(self.paths, self.kinds, strict=True) if k == kind]

    @property
    def seg_path(self) -> Path:
        [path] = self.of_kind("SEG")
        return path

    def sr_path(self, series_number: int | None = None) -> Path:
        """The main SR, or the SR of the given series number."""
        for path in self.of_kind("SR"):
            number = int(pydicom.dcmread(path, stop_before_pixels=True).SeriesNumber)
            if (series_number is None and number != VIEWER_SR_SERIES_NUMBER) or (
                number == series_number
            ):
                return path
        raise AssertionError(f"no SR (series {series_number}) among {self.paths}")


@pytest.fixture(scope="module")
def covid_ct(covid_study: PreparedSeries) -> CTVolume:
    """P002 as the node receives it (valid UIDs), read once for this module."""
    return read_series(list(covid_study.files))


@pytest.fixture(scope="module")
def processor_run(
    covid_study: PreparedSeries, covid_ct: CTVolume, tmp_path_factory: pytest.TempPathFactory
) -> ResultRun:
    out_dir = tmp_path_factory.mktemp("conformance-processor")
    processor = ChestCTProcessor(MORPHOLOGY_SETTINGS)
    outcome = processor.process(
        ProcessRequest(
            job_id=1, files=tuple(covid_study.files), out_dir=out_dir, uid_root=PROCESSOR_UID_ROOT
        )
    )
    # The stage outputs the files must encode, computed again by the same configured stages.
    reference = build_runner(ProcessorConfig.from_settings(MORPHOLOGY_SETTINGS)).run(covid_ct)
    return ResultRun(
        "processor", covid_study, reference,
        tuple(o.path for o in outcome.objects), tuple(o.kind for o in outcome.objects),
    )


@pytest.fixture(scope="module")
def lesions_run(
    covid_study: PreparedSeries, covid_ct: CTVolume, tmp_path_factory: pytest.TempPathFactory
) -> ResultRun:
    out_dir = tmp_path_factory.mktemp("conformance-lesions")
    runner = PipelineRunner(
        MorphologicalLungSegmenter(), FixedClassifier(), LungCentreLocalizer(),
        SecondaryCaptureOverlay(),
    )
    result = runner.run(covid_ct)
    written = runner.write_results(result, out_dir, LESIONS_UID_ROOT)
    return ResultRun(
        "lesions", covid_study, result,
        tuple(o.path for o in written), tuple(o.kind for o in written),
    )


@pytest.fixture(scope="module", params=RUNS)
def run(request: pytest.FixtureRequest) -> ResultRun:
    value: ResultRun = request.getfixturevalue(f"{request.param}_run")
    return value


def _tool(name: str) -> Path:
    try:
        return find_tool(name)
    except MissingPeerError as exc:
        pytest.fail(str(exc), pytrace=False)


def _groups(sr: Any) -> list[Any]:
    return hd.sr.utils.find_content_items(
        sr.content[0], name=dicom_codes.DCM.MeasurementGroup, recursive=True
    )


def _children(item: Any, name: object) -> list[Any]:
    return [child for child in item.get("ContentSequence", []) if child.name == name]


def _text(item: Any, name: object) -> str:
    [child] = _children(item, name)
    return str(child.value)


def _num(item: Any, name: object) -> float:
    [child] = _children(item, name)
    return float(child.MeasuredValueSequence[0].NumericValue)


def _lesion_union(result: StudyResult) -> npt.NDArray[np.bool_]:
    union = np.zeros(result.volume.shape, dtype=bool)
    for lesion in result.lesions:
        union |= lesion.mask
    return union


def test_the_runs_wrote_what_their_stages_found(
    processor_run: ResultRun, lesions_run: ResultRun
) -> None:
    assert processor_run.kinds[:2] == ("SEG", "SR") and "OVERLAY" in processor_run.kinds
    assert processor_run.kinds.count("SR") == 1  # no lesions, so no viewer SR
    assert lesions_run.kinds[:3] == ("SEG", "SR", "SR") and "OVERLAY" in lesions_run.kinds
    assert len(lesions_run.result.lesions) == 2
    assert {lesion.side for lesion in lesions_run.result.lesions} == {"left", "right"}


def test_every_object_passes_dciodvfy(run: ResultRun) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(dciodvfy_errors, run.paths))
    failures = {str(p): errors for p, errors in zip(run.paths, reports, strict=True) if errors}
    assert failures == {}


def test_every_algorithm_is_contributing_equipment(lesions_run: ResultRun) -> None:
    """AIR: each algorithm in the Contributing Equipment Sequence ("Processing Equipment",
    name, version, a Device UID from its weights checksum); the scanner stays first."""
    models = {model.name: model for model in lesions_run.result.algorithms}
    overlay = lesions_run.of_kind("OVERLAY")
    for path in (lesions_run.seg_path, lesions_run.sr_path(), overlay[0]):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items = list(ds.ContributingEquipmentSequence)
        assert items[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109101"  # scanner
        algorithms = {
            str(item.ManufacturerModelName): item for item in items
            if str(item.get("ContributionDescription", "")).startswith("Processing algorithm")
        }
        assert algorithms, path.name
        for name, item in algorithms.items():
            model = models[name]
            assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
            assert str(item.SoftwareVersions) == model.version
            assert str(item.DeviceUID) == algorithm_device_uid(model)
    seg_items = pydicom.dcmread(lesions_run.seg_path, stop_before_pixels=True)
    names = {str(i.ManufacturerModelName) for i in seg_items.ContributingEquipmentSequence}
    assert {lung_model(lesions_run.result).name, lesion_model(lesions_run.result).name} <= names


def test_dcentvfy_finds_no_inconsistency_across_source_and_results(run: ResultRun) -> None:
    assert dcentvfy_errors([*run.study.files, *run.paths]) == []


def test_main_sr_renders_with_dcmtk(run: ResultRun, tmp_path: Path) -> None:
    sr_path = run.sr_path()
    html = subprocess.run(
        [str(_tool("dsr2html")), str(sr_path)], capture_output=True, text=True,
        errors="replace", check=False,
    )
    assert html.returncode == 0, html.stderr
    sr = pydicom.dcmread(sr_path)
    for stats, group in zip(run.result.lung_stats, _lung_groups(sr), strict=True):
        volume_item = [i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue
                       == codes.VOLUME.value][0]
        written = str(volume_item.MeasuredValueSequence[0].NumericValue)
        assert float(written) == pytest.approx(stats.volume_ml, abs=1e-3)
        assert f"{written} ml" in html.stdout
    dump = subprocess.run(
        [str(_tool("dsrdump")), "-Ec", str(sr_path)], capture_output=True, text=True,
        errors="replace", check=False,
    )
    assert dump.returncode == 0, dump.stderr
    assert "Left lung" in dump.stdout and "Right lung" in dump.stdout


def _lung_groups(sr: pydicom.Dataset) -> list[Any]:
    """Lung measurement groups of the raw dataset in (left, right) order of ``lung_stats``."""
    measurements = [
        item for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ][0]
    groups = {}
    for group in measurements.ContentSequence:
        for item in group.ContentSequence:
            if item.ConceptNameCodeSequence[0].CodeValue == "112039":  # Tracking Identifier
                groups[str(item.TextValue)] = group
    return [groups["Left lung"], groups["Right lung"]]


def test_main_sr_content_tree(run: ResultRun) -> None:
    sr = hd.sr.srread(run.sr_path())
    seg = hd.seg.segread(run.seg_path)
    result = run.result
    root = sr.content[0]
    procedures = [item.value for item in _children(root, dicom_codes.DCM.ProcedureReported)]
    assert procedures == [codes.PROCEDURE_CT]
    assert _text(root, dicom_codes.DCM.DeviceObserverUID) == DEVICE_OBSERVER_UID
    assert _text(root, dicom_codes.DCM.DeviceObserverName) == DEVICE_OBSERVER_NAME
    by_id = {_text(g, dicom_codes.DCM.TrackingIdentifier): g for g in _groups(sr)}
    segment_by_tracking_uid = {str(s.TrackingUID): s for s in seg.SegmentSequence}

    lungs = lung_model(result)
    for stats in result.lung_stats:
        group = by_id[f"{stats.side.capitalize()} lung"]
        assert _num(group, codes.VOLUME) == pytest.approx(stats.volume_ml, abs=1e-3)
        _assert_algorithm(group, lungs)

    localizer = lesion_model(result)
    for lesion in result.lesions:
        group = by_id[f"Lesion {lesion.number}"]
        tracking_uid = _text(group, dicom_codes.DCM.TrackingUniqueIdentifier)
        segment = segment_by_tracking_uid[tracking_uid]
        assert str(segment.SegmentLabel) == f"Lesion {lesion.number}"
        [reference] = _children(group, dicom_codes.DCM.ReferencedSegment)
        item = reference.ReferencedSOPSequence[0]
        assert item.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert item.ReferencedSOPClassUID == SegmentationStorage
        assert int(item.ReferencedSegmentNumber) == int(segment.SegmentNumber)
        [site] = _children(group, dicom_codes.SCT.FindingSite)
        assert site.value == codes.LUNG
        assert site.ContentSequence[0].value == codes.LATERALITY_CODES[lesion.side]
        assert _num(group, codes.VOLUME) == pytest.approx(lesion.volume_ml, abs=1e-3)
        _assert_algorithm(group, localizer)

    assert set(by_id) == {f"{s.side.capitalize()} lung" for s in result.lung_stats} | {
        f"Lesion {lesion.number}" for lesion in result.lesions
    }
    evaluations = _children(root, codes.QUALITATIVE_EVALUATIONS)
    classification = result.classification
    if classification is not None:
        [container] = evaluations
        for class_name, probability in classification.probabilities.items():
            [item] = _children(container, codes.class_code(class_name))
            expected = codes.PRESENT if class_name == classification.label else codes.ABSENT
            assert item.value == expected
            assert _num(item, codes.PROBABILITY) == pytest.approx(probability, abs=1e-6)
        _assert_algorithm(container, classification.model)
    else:
        assert evaluations == []


def _assert_algorithm(group: Any, model: ModelInfo) -> None:
    assert _text(group, dicom_codes.DCM.AlgorithmName) == model.name
    assert _text(group, dicom_codes.DCM.AlgorithmVersion) == model.version


def test_seg_matches_the_pipeline_masks_voxel_for_voxel(run: ResultRun) -> None:
    seg = hd.seg.segread(run.seg_path)
    result = run.result
    uids = [str(ds.SOPInstanceUID) for ds in result.volume.datasets]
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    assert labels.shape == result.volume.shape
    assert not (result.lungs.left & result.lungs.right).any()
    lesions = _lesion_union(result)
    expected: dict[str, npt.NDArray[np.bool_]] = {
        "left-lung": result.lungs.left & ~lesions,
        "right-lung": result.lungs.right & ~lesions,
    }
    for lesion in result.lesions:
        expected[f"lesion-{lesion.number}"] = lesion.mask
    segments = {str(s.TrackingID): int(s.SegmentNumber) for s in seg.SegmentSequence}
    assert set(segments) == set(expected)
    for tracking_id, mask in expected.items():
        assert np.array_equal(labels == segments[tracking_id], mask), tracking_id
    assert np.array_equal(labels > 0, result.lungs.both | lesions)


def test_seg_segments_frames_and_references(run: ResultRun) -> None:
    seg = hd.seg.segread(run.seg_path)
    volume = run.result.volume
    for segment in seg.SegmentSequence:
        assert len(segment.RecommendedDisplayCIELabValue) == 3
        assert str(segment.SegmentAlgorithmName)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), -1)
    assert frames.any(axis=1).all()  # no empty frame
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in run.study.files}
    assert referenced == sources
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == run.study.series_instance_uid
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert seg.FrameOfReferenceUID == pydicom.dcmread(
        run.study.files[0], stop_before_pixels=True
    ).FrameOfReferenceUID


def test_seg_algorithm_identification_names_model_and_version(run: ResultRun) -> None:
    seg = hd.seg.segread(run.seg_path)
    result = run.result
    models = {"lung": lung_model(result), "lesion": lesion_model(result)}
    for segment in seg.SegmentSequence:
        kind = "lesion" if str(segment.TrackingID).startswith("lesion-") else "lung"
        [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == models[kind].name == segment.SegmentAlgorithmName
        assert algorithm.AlgorithmVersion == models[kind].version


def test_algorithm_identification_carries_the_weights_checksum(lesions_run: ResultRun) -> None:
    seg = hd.seg.segread(lesions_run.seg_path)
    localizer = lesion_model(lesions_run.result)
    assert localizer.sha256
    lesion_segments = [s for s in seg.SegmentSequence if str(s.TrackingID).startswith("lesion")]
    for segment in lesion_segments:
        [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
        assert localizer.sha256 in str(algorithm.get("AlgorithmParameters", ""))
    sr = hd.sr.srread(lesions_run.sr_path())
    for group in _groups(sr):
        names = [str(i.value) for i in _children(group, dicom_codes.DCM.AlgorithmName)]
        parameters = " ".join(
            str(i.value) for i in _children(group, dicom_codes.DCM.AlgorithmParameters)
        )
        models = [m for m in lesions_run.result.algorithms if m.name in names and m.sha256]
        for model in models:
            assert model.sha256 in parameters


def test_viewer_sr_outlines_the_real_lesions(lesions_run: ResultRun) -> None:
    sr = hd.sr.srread(lesions_run.sr_path(VIEWER_SR_SERIES_NUMBER))
    seg = hd.seg.segread(lesions_run.seg_path)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == lesions_run.study.study_instance_uid
    volume = lesions_run.result.volume
    z_by_uid = {str(ds.SOPInstanceUID): z for z, ds in enumerate(volume.datasets)}
    lesion_uids = {
        str(s.TrackingUID): int(str(s.TrackingID).split("-")[1])
        for s in seg.SegmentSequence if str(s.TrackingID).startswith("lesion-")
    }
    lesions = {lesion.number: lesion for lesion in lesions_run.result.lesions}
    groups = _groups(sr)
    assert len(groups) == len(lesions) == len(lesion_uids)
    for group in groups:
        assert _text(group, dicom_codes.DCM.TrackingIdentifier) == CORNERSTONE_FREEHAND_TRACKING_ID
        lesion = lesions[lesion_uids[_text(group, dicom_codes.DCM.TrackingUniqueIdentifier)]]
        [area] = _children(group, codes.AREA)
        [scoord] = [c for c in area.ContentSequence if c.ValueType == "SCOORD"]
        image = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        z = z_by_uid[str(image.ReferencedSOPInstanceUID)]
        assert z == lesion.largest_slice
        points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])
        ds = volume.datasets[z]
        assert points[:, 0].min() >= 0 and points[:, 0].max() <= int(ds.Columns)
        assert points[:, 1].min() >= 0 and points[:, 1].max() <= int(ds.Rows)
        pixel_centres = np.argwhere(lesion.mask[z])[:, ::-1] + 0.5
        assert points_in_poly(pixel_centres.mean(axis=0, keepdims=True), points)[0]
        # Lesion pixels of other regions on that slice may lie outside; most must be inside.
        assert points_in_poly(pixel_centres, points).mean() > 0.9
