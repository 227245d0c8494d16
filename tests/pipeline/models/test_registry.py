"""The weights registry (export, load, checksum refusal) and device selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.device import configure_threads, select_device
from pipeline.errors import ModelError
from pipeline.models.decovnet import DeCoVNet
from pipeline.models.registry import (
    DEFAULT_WEIGHTS_DIR,
    REGISTRY_FILE,
    WEIGHTS_DIR_ENV,
    export_weights,
    get_spec,
    load_model,
    read_registry,
    register_model,
    sha256_file,
    weights_dir,
)


def _export_decovnet(registry: Path, name: str = "decovnet") -> DeCoVNet:
    torch.manual_seed(0)
    net = DeCoVNet()
    export_weights(
        net,
        name,
        "decovnet",
        version="1.2.3",
        card_text="# DeCoVNet\nRandom weights for a test.\n",
        class_names=("non-covid", "covid19"),
        positive_class="covid19",
        arch_kwargs={"num_classes": 2},
        input_spec={"crop_shape_px": [224, 336]},
        metadata={"epochs": 0},
        registry_dir=registry,
    )
    return net


def test_export_then_load_round_trip(registry: Path) -> None:
    net = _export_decovnet(registry)
    raw = json.loads((registry / REGISTRY_FILE).read_text())
    entry = raw["models"]["decovnet"]
    assert entry["weights"] == "decovnet.pt"
    assert entry["sha256"] == sha256_file(registry / "decovnet.pt")
    assert (registry / "decovnet.md").read_text().startswith("# DeCoVNet")
    model, spec = load_model("decovnet", "cpu", registry_dir=registry)
    assert isinstance(model, DeCoVNet) and not model.training
    assert spec.class_names == ("non-covid", "covid19") and spec.positive_class == "covid19"
    assert spec.info.version == "1.2.3" and spec.info.sha256 == entry["sha256"]
    assert spec.card_path == registry / "decovnet.md"
    for key, value in net.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_checksum_mismatch_is_refused(registry: Path) -> None:
    _export_decovnet(registry)
    path = registry / "decovnet.pt"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model("decovnet", "cpu", registry_dir=registry)


def test_missing_weights_file_is_refused(registry: Path) -> None:
    _export_decovnet(registry)
    (registry / "decovnet.pt").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model("decovnet", "cpu", registry_dir=registry)


def test_unregistered_name_says_how_to_get_weights(registry: Path) -> None:
    with pytest.raises(ModelError, match="no trained weights registered for model 'decovnet'"):
        load_model("decovnet", "cpu", registry_dir=registry)


def test_weights_of_another_architecture_are_refused(registry: Path) -> None:
    _export_decovnet(registry)
    register_model(
        "wrong",
        "unet2d",
        "decovnet.pt",
        version="0",
        class_names=("a", "b"),
        registry_dir=registry,
    )
    with pytest.raises(ModelError, match="do not fit"):
        load_model("wrong", "cpu", registry_dir=registry)


def test_export_refuses_a_model_that_does_not_match_its_architecture(registry: Path) -> None:
    with pytest.raises(ValueError):
        export_weights(
            DeCoVNet(num_classes=3),
            "x",
            "decovnet",
            version="0",
            card_text="",
            arch_kwargs={"num_classes": 2},
            registry_dir=registry,
        )
    assert not (registry / "x.pt").exists()


def test_registry_directory_from_the_environment(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    assert weights_dir() == DEFAULT_WEIGHTS_DIR
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(registry))
    assert weights_dir() == registry
    _export_decovnet(registry, name="env-model")
    assert "env-model" in read_registry()
    assert get_spec("env-model").registry_dir == registry


def test_device_selection() -> None:
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("").type == expected
    with pytest.raises(ValueError):
        select_device("tpu")
    with pytest.raises(ValueError):
        select_device("mps")
    if torch.cuda.is_available():
        assert select_device("cuda").type == "cuda"
        with pytest.raises(ValueError):
            select_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_configure_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(0) == before
        assert configure_threads(1) == 1
        with pytest.raises(ValueError):
            configure_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_a_second_export_keeps_the_first_entry(registry: Path) -> None:
    _export_decovnet(registry, name="first")
    _export_decovnet(registry, name="second")
    assert set(read_registry(registry)) == {"first", "second"}


def test_shipped_registry_entries_match_their_files() -> None:
    """Every model registered in the package's weights directory has its file and card, and
    the file's sha256 is the registered one."""
    for name, spec in read_registry(DEFAULT_WEIGHTS_DIR).items():
        assert spec.weights_path.is_file(), f"{name}: {spec.weights_path} missing"
        assert sha256_file(spec.weights_path) == spec.sha256, f"{name}: checksum differs"
        assert spec.card_path is not None and spec.card_path.is_file(), f"{name}: no model card"
