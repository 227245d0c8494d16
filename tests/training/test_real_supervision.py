"""Weak supervision from real studies: the multiple-instance CAM loss and leave-one-study-out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.__main__ import _real_training_inputs
from training.dicom_writer import write_series
from training.mil_loss import grid_rows, mil_cam_loss, real_cam_loss
from training.real_cases import MUST_FIRE, MUST_STAY_ZERO, select_names
from training.real_data import load_real_cases, real_case_names
from training.synthetic import generate_case
from training.train_decovnet import load_prepared

T, H, W = 6, 4, 5
FIRE = torch.tensor([False, False, True, True, False, False])  # rows 2-3 labelled infected
LUNG = torch.ones(T, H, W, dtype=torch.bool)
NO_LESION = torch.zeros(T, H, W)
LOW, HIGH = -8.0, 8.0  # CAM logits: clearly silent, clearly firing


def _cam(*cells: tuple[int, int, int]) -> torch.Tensor:
    cam = torch.full((T, H, W), LOW)
    for t, y, x in cells:
        cam[t, y, x] = HIGH
    return cam


def test_mil_loss_is_low_when_only_labelled_slices_fire() -> None:
    # one hot cell in each labelled row suffices (top-3 mean of 8, -8, -8 is still negative,
    # so three cells fire per row); the rest of a labelled row is free
    cam = _cam(*[(t, 1, x) for t in (2, 3) for x in (0, 1, 2)])
    assert float(mil_cam_loss(cam, FIRE, NO_LESION, LUNG)) < 0.01


def test_mil_loss_fails_when_a_clean_slice_fires() -> None:
    good = _cam(*[(t, 1, x) for t in (2, 3) for x in (0, 1, 2)])
    bad = good.clone()
    bad[0] = HIGH  # a clean row lights up
    assert float(mil_cam_loss(bad, FIRE, NO_LESION, LUNG)) > 1.0
    assert float(mil_cam_loss(bad, FIRE, NO_LESION, LUNG)) > 100 * float(
        mil_cam_loss(good, FIRE, NO_LESION, LUNG))


def test_mil_loss_fails_when_no_labelled_slice_fires() -> None:
    silent = _cam()
    assert float(mil_cam_loss(silent, FIRE, NO_LESION, LUNG)) > 1.0
    # firing outside the lung does not count for a labelled row
    lung = LUNG.clone()
    lung[:, 0] = False
    outside = _cam(*[(t, 0, x) for t in (2, 3) for x in range(W)])
    assert float(mil_cam_loss(outside, FIRE, NO_LESION, lung)) > 1.0


def test_mil_loss_negative_study_must_stay_silent_but_inserted_lesions_fire() -> None:
    none = torch.zeros(T, dtype=torch.bool)
    share = NO_LESION.clone()
    share[4, 2, 2] = 1.0  # an inserted COVID-like lesion
    good = float(mil_cam_loss(_cam((4, 2, 2)), none, share, LUNG))
    assert good < 0.01
    assert float(mil_cam_loss(_cam(), none, share, LUNG)) > 1.0  # lesion missed
    # one stray cell of 119 negatives: the mean over negatives still rises 100-fold
    assert float(mil_cam_loss(_cam((4, 2, 2), (1, 1, 1)), none, share, LUNG)) > 50 * good


def test_real_cam_loss_pools_crop_labels_to_the_grid() -> None:
    labels = torch.full((12,), MUST_STAY_ZERO)
    labels[5] = MUST_FIRE  # crop slice 5 -> grid row 2 of 6
    assert grid_rows(labels, T, MUST_FIRE).tolist() == [False, False, True, False, False, False]
    cam = _cam(*[(2, 1, x) for x in (0, 1, 2)])
    lesion = torch.zeros(12, 8, 10)
    lung = torch.ones(12, 8, 10)
    assert float(real_cam_loss(cam, labels, lesion, lung)) < 0.01
    assert float(real_cam_loss(_cam(), labels, lesion, lung)) > 1.0


def test_select_names_leaves_out_and_rejects_unknown() -> None:
    names = ["P002", "cap002", "normal002"]
    assert select_names(names, "all", ["normal002"]) == ["P002", "cap002"]
    assert select_names(names, ["cap002", "P002"]) == ["P002", "cap002"]
    assert select_names(names, "none") == []
    with pytest.raises(ValueError, match="unknown"):
        select_names(names, "all", ["P003"])


def _tiny_root(tmp: Path) -> Path:
    """A cases.json with one small real-format study ("kept") and one whose folder does not
    exist ("held"): reading the held-out study would fail."""
    case = generate_case(3, kind="normal", matrix=128, slice_spacing_mm=5.0)
    write_series(case.hu, case.spacing_mm, tmp / "series" / "kept", patient_id="KEPT")
    labels = {"cases": [
        {"case": "kept", "diagnosis": "Normal", "covid_positive": False, "path": "series/kept",
         "infection_slices": []},
        {"case": "held", "diagnosis": "COVID-19", "covid_positive": True,
         "path": "series/missing", "infection_slices": [1, 2]},
    ]}
    (tmp / "labels").mkdir()
    (tmp / "labels" / "cases.json").write_text(json.dumps(labels))
    return tmp


def test_loader_never_opens_a_left_out_study(tmp_path: Path) -> None:
    root = _tiny_root(tmp_path / "data")
    assert real_case_names(root) == ["kept", "held"]
    with pytest.raises(FileNotFoundError):
        load_real_cases(root)  # the held-out folder is unreadable ...
    cases = load_real_cases(root, names=select_names(real_case_names(root), "all", ["held"]))
    assert [c.name for c in cases] == ["kept"]  # ... and never touched when left out


@pytest.mark.slow
def test_train_decovnet_real_inputs_exclude_the_left_out_study(tmp_path: Path) -> None:
    root = _tiny_root(tmp_path / "data")
    work = tmp_path / "work"
    args = argparse.Namespace(real_root=root, real_cases="all", leave_out=["held"],
                              work_dir=work)
    paths = _real_training_inputs(args, (32, 48))
    assert paths and all("held" not in p.name for p in paths)
    assert not any("held" in p.name for p in work.rglob("*"))
    volumes = [load_prepared(p) for p in paths]
    assert {v.kind for v in volumes} >= {"real:kept", "real:kept+covid0"}
    for v in volumes:
        assert v.slice_label is not None and v.slice_label.shape[0] == v.image.shape[0]
        assert not (v.slice_label == MUST_FIRE).any()  # a normal study never must fire
        assert v.label == int(v.lesion.any())  # COVID only where COVID-like lesions went in
    assert np.count_nonzero(volumes[1].lesion) > 0


@pytest.mark.slow
def test_train_decovnet_reads_an_export_verdicts_folder(tmp_path: Path) -> None:
    """The layout of ``dicomnode export-verdicts``: a confirmed COVID case with its accepted
    lesion mask, and a left-out case whose files do not exist."""
    from training.reviewed_cases import MAY_FIRE, is_verdict_export

    root = tmp_path / "export"
    case = generate_case(5, kind="covid", matrix=128, slice_spacing_mm=5.0)
    write_series(case.hu, case.spacing_mm, root / "images" / "case-0001", patient_id="ANON1")
    (root / "masks").mkdir()
    np.save(root / "masks" / "case-0001.npy", case.lesion_mask.astype(np.uint8))
    (root / "labels.csv").write_text(
        "path,label,mask,accepted_lesions\n"
        "images/case-0001,covid19,masks/case-0001.npy,1 2\n"
        "images/case-0002,non-covid,masks/case-0002.npy,\n")
    assert is_verdict_export(root)
    args = argparse.Namespace(real_root=root, real_cases="all", leave_out=["case-0002"],
                              work_dir=tmp_path / "work")
    paths = _real_training_inputs(args, (32, 48))
    assert len(paths) == 1 and "case-0001" in paths[0].name
    v = load_prepared(paths[0])
    assert v.label == 1 and v.lesion.any() and v.slice_label is not None
    assert set(np.unique(v.slice_label).tolist()) == {MAY_FIRE, MUST_FIRE}
    # the lesion slices are the ones that must fire
    lesion_slices = v.lesion.reshape(v.lesion.shape[0], -1).any(axis=1)
    assert (v.slice_label[lesion_slices] == MUST_FIRE).all()


def test_exported_card_names_the_real_studies_a_run_trained_on() -> None:
    from training.publish import _real_training_text

    assert "No real study" in _real_training_text({})
    text = _real_training_text({"real_volumes": ["real:P002", "real:P002+covid0"],
                                "real_share": 0.4})
    assert "`real:P002`" in text and "in-sample" in text and "40%" in text
