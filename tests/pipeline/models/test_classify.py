"""DeCoVNet and CNN-BERT classifier stages with random weights in a private registry; the CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ModelError, PipelineError
from pipeline.models.cnn_bert import CnnBert, CnnBertMlp
from pipeline.models.decovnet import DeCoVNet
from pipeline.models.registry import export_weights
from pipeline.preprocessing import bounding_box, decovnet_input
from pipeline.stages import Classifier
from pipeline.stages.cam import cam_to_volume, feature_cam, normalise_cam
from pipeline.stages.classify import CnnBertClassifier, DeCoVNetClassifier
from pipeline.types import LungMask
from tests.pipeline.models.phantoms import Phantom

CLASSES = ("non-covid", "covid19")


def _register_decovnet(registry: Path, num_classes: int = 2) -> DeCoVNet:
    torch.manual_seed(0)
    net = DeCoVNet(num_classes=num_classes)
    # give the zero-initialised residual branches and the head some signal
    for key in ("s2.branch_c.1.weight", "s3.branch_c.1.weight"):
        torch.nn.init.ones_(net.state_dict()[key])
    names = CLASSES if num_classes == 2 else ("normal", "cap", "covid19")
    export_weights(
        net,
        "decovnet",
        "decovnet",
        version="0.0.1-test",
        card_text="# test\n",
        class_names=names,
        positive_class="covid19",
        arch_kwargs={"num_classes": num_classes},
        input_spec={"crop_shape_px": [112, 168]},  # half size keeps the test fast
        registry_dir=registry,
    )
    return net


def _lungs(phantom: Phantom) -> LungMask:
    return LungMask(left=phantom.left, right=phantom.right | phantom.lesion, method="truth")


def test_decovnet_stage_without_weights_raises(registry: Path) -> None:
    with pytest.raises(ModelError, match="decovnet"):
        DeCoVNetClassifier(device="cpu", registry_dir=registry)


def test_decovnet_stage_outputs(registry: Path, phantom: Phantom) -> None:
    _register_decovnet(registry)
    clf: Classifier = DeCoVNetClassifier(device="cpu", registry_dir=registry)
    result = clf.classify(phantom.volume, _lungs(phantom))
    assert set(result.probabilities) == set(CLASSES)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.p_covid == pytest.approx(result.probabilities["covid19"])
    assert result.label == max(result.probabilities, key=result.probabilities.__getitem__)
    assert result.embedding.shape == (32,) and result.embedding.dtype == np.float32
    assert result.model == clf.info and result.model.version == "0.0.1-test"
    act = result.activation
    assert act is not None and act.shape == phantom.volume.shape and act.dtype == np.float32
    assert 0.0 <= act.min() and act.max() <= 1.0
    box = bounding_box(_lungs(phantom).both)
    assert box is not None
    outside = np.ones(act.shape, dtype=bool)
    outside[box.slices] = False
    assert not act[outside].any()
    again = clf.classify(phantom.volume, _lungs(phantom))
    assert again.probabilities == result.probabilities
    np.testing.assert_array_equal(again.activation, act)


def test_decovnet_three_classes(registry: Path, phantom: Phantom) -> None:
    _register_decovnet(registry, num_classes=3)
    clf = DeCoVNetClassifier(device="cpu", registry_dir=registry, compute_cam=False)
    result = clf.classify(phantom.volume, _lungs(phantom))
    assert list(result.probabilities) == ["normal", "cap", "covid19"]
    assert result.activation is None


def test_decovnet_stage_refuses_empty_lungs(registry: Path, phantom: Phantom) -> None:
    _register_decovnet(registry)
    clf = DeCoVNetClassifier(device="cpu", registry_dir=registry)
    empty = np.zeros(phantom.volume.shape, dtype=bool)
    with pytest.raises(PipelineError):
        clf.classify(phantom.volume, LungMask(empty, empty, "none"))


def test_cam_is_the_linear_map_of_the_features() -> None:
    torch.manual_seed(2)
    feats = torch.rand(1, 128, 3, 4, 5)
    weights = torch.randn(128, 2)
    cam = feature_cam(feats, weights, 1)
    expected = np.einsum("c,cthw->thw", weights[:, 1].numpy(), feats[0].numpy())
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(normalise_cam(np.full((2, 2, 2), 3.0, np.float32)), 0.0)


def test_cam_hot_spot_lands_on_the_right_voxels(phantom: Phantom) -> None:
    lungs = _lungs(phantom).both
    prepared = decovnet_input(phantom.volume.hu, lungs, phantom.volume.spacing_mm[0])
    box = prepared.geometry.box
    t = prepared.array.shape[1] // 2
    feats = torch.zeros(1, 128, t, 28, 42)
    feats[0, 0, t // 2, 7, 31] = 1.0  # a quarter down, three quarters right in the crop
    weights = torch.zeros(128, 2)
    weights[0, 1] = 1.0
    act = cam_to_volume(feature_cam(feats, weights, 1), prepared.geometry)
    z, y, x = np.unravel_index(int(np.argmax(act)), act.shape)
    assert act.max() == pytest.approx(1.0)
    assert abs(y - (box.y0 + 7 / 27 * (box.shape[1] - 1))) <= 2
    assert abs(x - (box.x0 + 31 / 41 * (box.shape[2] - 1))) <= 2
    assert abs(z - (box.z0 + (t // 2) / (t - 1) * (box.shape[0] - 1))) <= 2


def _register_cnn_bert(registry: Path, with_mlp: bool) -> None:
    torch.manual_seed(0)
    backbone = CnnBert(depth=10, base_width=8)
    export_weights(
        backbone,
        "cnn-bert",
        "cnn-bert",
        version="0.0.1-test",
        card_text="# test\n",
        class_names=("covid19", "non-covid"),
        positive_class="covid19",
        arch_kwargs={"depth": 10, "base_width": 8},
        input_spec={"size_px": 112, "resize_px": 140},
        registry_dir=registry,
    )
    if with_mlp:
        export_weights(
            CnnBertMlp(in_features=128),
            "cnn-bert-mlp",
            "cnn-bert-mlp",
            version="0.0.2-test",
            card_text="# test\n",
            class_names=("covid19", "non-covid"),
            positive_class="covid19",
            arch_kwargs={"in_features": 128},
            registry_dir=registry,
        )


@pytest.mark.parametrize("with_mlp", [True, False])
def test_cnn_bert_stage(registry: Path, phantom: Phantom, with_mlp: bool) -> None:
    _register_cnn_bert(registry, with_mlp)
    clf: Classifier = CnnBertClassifier(
        device="cpu", registry_dir=registry, mlp="cnn-bert-mlp" if with_mlp else None
    )
    result = clf.classify(phantom.volume, _lungs(phantom))
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.p_covid == pytest.approx(result.probabilities["covid19"])
    assert result.embedding.shape == (128,)
    assert result.activation is None
    if with_mlp:
        assert result.model.name == "cnn-bert+cnn-bert-mlp"
        assert result.model.version == "0.0.1-test+0.0.2-test"
    else:
        assert result.model.name == "cnn-bert"


def test_cnn_bert_stage_checks_the_mlp_width(registry: Path) -> None:
    _register_cnn_bert(registry, with_mlp=False)
    export_weights(
        CnnBertMlp(),
        "cnn-bert-mlp",
        "cnn-bert-mlp",
        version="0",
        card_text="",
        class_names=("covid19", "non-covid"),
        positive_class="covid19",
        registry_dir=registry,
    )
    with pytest.raises(ModelError, match="1024"):
        CnnBertClassifier(device="cpu", registry_dir=registry)
