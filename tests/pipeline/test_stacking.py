"""Result geometry whichever way a series is stacked and whichever order its files come in.

A small phantom is written as real CT files (pixel data) and read back with the node's reader,
in every combination of:

- orientation: slice normal towards the head (rows L, columns P) or towards the feet
  (rows L, columns A);
- stacking: instance numbers rising along the slice normal, or against it, with the vendor's
  signed Spacing Between Slices (negative) as a scanner that stacks that way writes it;
- file order: files listed in instance order or in reverse.

The SEG must state a positive Spacing Between Slices equal to the distance between slice
positions, place every frame at its source image's position, pass dciodvfy, and hold the
lungs voxel for voxel; the SR's volumes are positive and equal the voxel counts; the overlay
numbers its images as a viewer orders the source images (by Instance Number).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.sr.codedict import codes as dicom_codes

from pipeline.series import read_series
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from pipeline.types import StudyResult
from pipeline.writers import codes
from pipeline.writers.overlay import OverlayRenderer, write_overlay
from pipeline.writers.seg import write_seg
from pipeline.writers.slice_numbers import viewer_positions
from pipeline.writers.sr import write_sr
from tests.peers.dicom3tools import dciodvfy_errors
from tests.pipeline.conftest import make_phantom, make_result, slice_datasets

SHAPE = (14, 96, 96)
SPACING_MM = (8.0, 2.5, 2.5)
HEAD_NORMAL = np.eye(3)  # rows +x (L), columns +y (P): normal +z (H)
FEET_NORMAL = np.diag([1.0, -1.0, -1.0])  # rows +x (L), columns -y (A): normal -z (F)
UID_ROOT = "2.25.4242"


def _files(
    folder: Path, direction: npt.NDArray[np.float64], against: bool, reverse_files: bool
) -> list[Path]:
    phantom = make_phantom(shape=SHAPE, spacing=SPACING_MM, direction=direction)
    datasets = slice_datasets(
        phantom.volume.hu, SPACING_MM, uid_root=f"stack-{against}", direction=direction
    )
    n = len(datasets)
    for z, ds in enumerate(datasets):
        if against:  # instance 1 is the last slice along the normal
            ds.InstanceNumber = n - z
            ds.SpacingBetweenSlices = -SPACING_MM[0]
        else:
            ds.SpacingBetweenSlices = SPACING_MM[0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"IM{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths, reverse=reverse_files)


def _result(paths: list[Path]) -> StudyResult:
    volume = read_series(paths)
    lungs = MorphologicalLungSegmenter().segment(volume)
    return make_result(volume, lungs, classification=False)


CASES = [
    pytest.param(direction, against, reverse, id=f"{name}-{stack}-{order}")
    for name, direction in (("head-normal", HEAD_NORMAL), ("feet-normal", FEET_NORMAL))
    for against, stack in ((False, "along"), (True, "against"))
    for reverse, order in ((False, "files-in-order"), (True, "files-reversed"))
]


@pytest.mark.parametrize(("direction", "against", "reverse_files"), CASES)
def test_seg_and_sr_geometry_for_every_stacking(
    direction: npt.NDArray[np.float64], against: bool, reverse_files: bool, tmp_path: Path
) -> None:
    result = _result(_files(tmp_path / "ct", direction, against, reverse_files))
    volume = result.volume
    assert volume.spacing_mm[0] == pytest.approx(SPACING_MM[0])
    seg_path = tmp_path / "seg.dcm"
    seg, plans = write_seg(result, seg_path, UID_ROOT)
    assert dciodvfy_errors(seg_path) == []
    written = pydicom.dcmread(seg_path)
    measures = written.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(SPACING_MM[0])
    assert float(measures.SliceThickness) > 0
    position_by_uid = {
        str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient]
        for ds in volume.datasets
    }
    for frame in written.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx(position_by_uid[str(source.ReferencedSOPInstanceUID)])
    labels = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        list(position_by_uid), combine_segments=True, assert_missing_frames_are_empty=True
    )
    assert np.array_equal(labels > 0, result.lungs.both)

    write_sr(result, seg, plans, tmp_path / "sr.dcm", UID_ROOT)
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    groups = hd.sr.utils.find_content_items(
        sr.content[0], name=dicom_codes.DCM.MeasurementGroup, recursive=True
    )
    volumes = [float(item.value) for g in groups for item in g.ContentSequence
               if item.name == codes.VOLUME]
    expected = sorted(
        float(mask.sum()) * volume.voxel_volume_ml for mask in (result.lungs.left,
                                                                 result.lungs.right)
    )
    assert sorted(volumes) == pytest.approx(expected, abs=1e-3)
    assert min(volumes) > 0


@pytest.mark.parametrize("against", [False, True], ids=["along", "against"])
def test_overlay_numbers_images_as_a_viewer_orders_them(against: bool, tmp_path: Path) -> None:
    result = _result(_files(tmp_path / "ct", HEAD_NORMAL, against, reverse_files=False))
    datasets = result.volume.datasets
    numbers = [int(ds.InstanceNumber) for ds in datasets]
    positions = viewer_positions(datasets)
    assert positions == numbers  # instance numbers 1..n: the viewer's position is the number
    assert OverlayRenderer(result).positions == positions
    files = write_overlay(result, tmp_path / "out", UID_ROOT, every_nth_slice=3)
    sources = [
        str(pydicom.dcmread(f.path, stop_before_pixels=True).SourceImageSequence[0]
            .ReferencedSOPInstanceUID)
        for f in files[:-1]
    ]
    number_of = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in datasets}
    shown = [number_of[uid] for uid in sources]
    assert shown == sorted(shown)  # the overlay scrolls like the CT in a viewer


def test_viewer_positions_fall_back_to_the_normal_without_usable_instance_numbers() -> None:
    def headers(*numbers: object) -> list[pydicom.Dataset]:
        datasets = []
        for number in numbers:
            ds = pydicom.Dataset()
            if number is not None:
                ds.InstanceNumber = number
            datasets.append(ds)
        return datasets

    assert viewer_positions(headers(30, 20, 10)) == [3, 2, 1]
    assert viewer_positions(headers(7, 3, 99)) == [2, 1, 3]  # gaps keep the order
    assert viewer_positions(headers(3, None, 1)) == [1, 2, 3]  # one missing: along the normal
    assert viewer_positions(headers(2, 2, 1)) == [1, 2, 3]  # repeated: along the normal
