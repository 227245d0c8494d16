"""``python -m training export-verdicts``: a reviewed study becomes a de-identified training
case that training's own reader loads, labelled by the verdict, with the accepted lesion's
mask; no patient name, ID or date is left in any file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicomnode.db.records import InstanceRecorder
from tests.dicomnode.conftest import ct_dataset
from training.__main__ import main as training_main
from training.datasets.public import NON_COVID_LABEL, load_scan, read_labelled_folder

from .conftest import NodeState, _study_attributes, store
from .test_verdicts import _with_lesions
from .users import logged_in, users_app

pytestmark = pytest.mark.slow


def _seg_segment_is_lesion_1(state: NodeState) -> None:
    """The fixture's SEG has one segment ("Lung"): call it "Lesion 1" for this test."""
    path = state.result_path("SEG")
    seg = dcmread(path)
    seg.SegmentSequence[0].SegmentLabel = "Lesion 1"
    seg.save_as(path)


def _four_more_slices(state: NodeState) -> None:
    """Training's reader wants 10 slices at least: the chest series gets 12 (the SEG covers
    the first 8)."""
    recorder = InstanceRecorder(state.sessions)
    for i in range(8, 12):
        ds = _study_attributes(ct_dataset(state.study_a, state.chest_series, i), "ACC-A",
                               "20200315", "CT CHEST")
        store(state.storage, recorder, ds)


def test_export_verdicts_reads_back_without_identifiers(fresh_state: NodeState,
                                                         tmp_path: Path) -> None:
    _with_lesions(fresh_state)
    _seg_segment_is_lesion_1(fresh_state)
    _four_more_slices(fresh_state)
    rita = logged_in(users_app(fresh_state), "rita")
    verdict = {"classification": "disagree", "findings": {"1": "accept", "2": "reject"}}
    assert rita.post(f"/api/jobs/{fresh_state.job_id}/verdict", json=verdict).status_code == 200
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{fresh_state.settings.node.data_dir}"\n')
    out = tmp_path / "export"
    assert training_main(["export-verdicts", "--config", str(config), "--out", str(out)]) == 0

    [record] = read_labelled_folder(out, out / "labels.csv")
    assert record.fmt == "dicom"
    assert record.label == NON_COVID_LABEL  # the AI said covid19, the reader disagreed
    scan = load_scan(record)
    assert scan.array.shape[0] == 12 and scan.is_hu
    mask = np.load(out / "masks" / "case-0001.npy")
    assert mask.shape == scan.array.shape
    assert int(mask.sum()) == 8 * 8 * 6 + 1  # the segment of the accepted lesion

    source = fresh_state.chest[0]
    secrets = {str(source.PatientName), str(source.PatientID), "Test", "Synthetic",
               "20200315", "19700101", "ACC-A", fresh_state.study_a}
    for path in (out / "images").rglob("*.dcm"):
        raw = path.read_bytes()
        assert not [s for s in secrets if s.encode() in raw], path
        ds = dcmread(path)
        assert all(not elem.value for elem in ds.iterall() if elem.VR in ("DA", "DT", "TM"))
