"""The model registry: which networks exist, where their weights are, and their checksums.

The registry is data: ``registry.json`` in the weights directory (``pipeline/weights/`` by
default, or ``$CHESTCT_WEIGHTS_DIR``, or an explicit ``registry_dir``) maps a model name to its
architecture and constructor arguments, its weights file (a state dict), the file's sha256, a
version, the class names, the input conventions and a markdown model card. ``training/`` writes
entries with :func:`export_weights`; the stages read them with :func:`load_model`, which refuses
missing files and checksum mismatches with :class:`ModelError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import ModelError
from pipeline.models.cnn_bert import CnnBert, CnnBertMlp
from pipeline.models.decovnet import DeCoVNet
from pipeline.models.unet2d import UNet2D
from pipeline.types import ModelInfo

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "CHESTCT_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
REGISTRY_FILE = "registry.json"
REGISTRY_FORMAT = 1

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet2d": UNet2D,
    "decovnet": DeCoVNet,
    "cnn-bert": CnnBert,
    "cnn-bert-mlp": CnnBertMlp,
}


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``input_spec`` holds the preprocessing conventions the model expects."""

    name: str
    architecture: str
    weights_file: str
    sha256: str
    version: str
    class_names: tuple[str, ...] = ()
    positive_class: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_spec: Mapping[str, Any] = field(default_factory=dict)
    card: str = ""
    created: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    registry_dir: Path = DEFAULT_WEIGHTS_DIR

    @property
    def weights_path(self) -> Path:
        return self.registry_dir / self.weights_file

    @property
    def card_path(self) -> Path | None:
        return self.registry_dir / self.card if self.card else None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, version=self.version, sha256=self.sha256)

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "arch_kwargs": dict(self.arch_kwargs),
            "weights": self.weights_file,
            "sha256": self.sha256,
            "version": self.version,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "input": dict(self.input_spec),
            "card": self.card,
            "created": self.created,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, name: str, entry: Mapping[str, Any], registry_dir: Path) -> ModelSpec:
        try:
            return cls(
                name=name,
                architecture=str(entry["architecture"]),
                weights_file=str(entry["weights"]),
                sha256=str(entry["sha256"]).lower(),
                version=str(entry["version"]),
                class_names=tuple(str(c) for c in entry.get("class_names", ())),
                positive_class=entry.get("positive_class"),
                arch_kwargs=dict(entry.get("arch_kwargs", {})),
                input_spec=dict(entry.get("input", {})),
                card=str(entry.get("card", "")),
                created=str(entry.get("created", "")),
                metadata=dict(entry.get("metadata", {})),
                registry_dir=registry_dir,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"registry entry {name!r} is malformed: {exc}") from exc


def weights_dir(registry_dir: str | Path | None = None) -> Path:
    """The registry directory: the argument, else ``$CHESTCT_WEIGHTS_DIR``, else the package's."""
    if registry_dir is not None:
        return Path(registry_dir)
    env = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    return Path(env) if env else DEFAULT_WEIGHTS_DIR


def _read_raw(directory: Path) -> dict[str, Any]:
    path = directory / REGISTRY_FILE
    if not path.is_file():
        return {"format": REGISTRY_FORMAT, "models": {}}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read model registry {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models", {}), dict):
        raise ModelError(f"model registry {path} has no 'models' mapping")
    raw.setdefault("models", {})
    return raw


def read_registry(registry_dir: str | Path | None = None) -> dict[str, ModelSpec]:
    """All registered models by name (empty when the directory has no registry.json)."""
    directory = weights_dir(registry_dir)
    raw = _read_raw(directory)
    return {
        name: ModelSpec.from_json(name, entry, directory) for name, entry in raw["models"].items()
    }


def get_spec(name: str, registry_dir: str | Path | None = None) -> ModelSpec:
    """The registry entry for ``name``; ModelError when none is registered."""
    directory = weights_dir(registry_dir)
    specs = read_registry(directory)
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise ModelError(
            f"no trained weights registered for model {name!r} in {directory} "
            f"(registered: {known}); train and export it with the training package "
            f"(dicomnode-train) or point {WEIGHTS_DIR_ENV} at a weights directory"
        )
    return specs[name]


def build_model(architecture: str, arch_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Construct an untrained network of a registered architecture."""
    factory = ARCHITECTURES.get(architecture)
    if factory is None:
        raise ModelError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    try:
        return factory(**dict(arch_kwargs or {}))
    except (TypeError, ValueError) as exc:
        kwargs = dict(arch_kwargs or {})
        raise ModelError(f"cannot build {architecture!r} with {kwargs}: {exc}") from exc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; weights and cards are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register_model(
    name: str,
    architecture: str,
    weights_file: str,
    *,
    version: str,
    class_names: tuple[str, ...] | list[str] = (),
    positive_class: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_spec: Mapping[str, Any] | None = None,
    card: str = "",
    metadata: Mapping[str, Any] | None = None,
    registry_dir: str | Path | None = None,
) -> ModelSpec:
    """Add or replace the entry for ``name``; the weights file must already be in the directory.

    The sha256 is computed from the file as it is now.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}")
    if positive_class is not None and positive_class not in class_names:
        raise ValueError(f"positive class {positive_class!r} is not one of {list(class_names)}")
    if Path(weights_file).name != weights_file:
        raise ValueError(f"weights_file must be a bare file name, got {weights_file!r}")
    directory = weights_dir(registry_dir)
    path = directory / weights_file
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    spec = ModelSpec(
        name=name,
        architecture=architecture,
        weights_file=weights_file,
        sha256=sha256_file(path),
        version=version,
        class_names=tuple(class_names),
        positive_class=positive_class,
        arch_kwargs=dict(arch_kwargs or {}),
        input_spec=dict(input_spec or {}),
        card=card,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        metadata=dict(metadata or {}),
        registry_dir=directory,
    )
    raw = _read_raw(directory)
    raw["format"] = REGISTRY_FORMAT
    raw["models"][name] = spec.to_json()
    text = json.dumps(raw, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / REGISTRY_FILE, text.encode("utf-8"))
    logger.info("registered model %s %s (sha256 %s)", name, version, spec.sha256[:12])
    return spec


def export_weights(
    model: nn.Module,
    name: str,
    architecture: str,
    *,
    version: str,
    card_text: str,
    class_names: tuple[str, ...] | list[str] = (),
    positive_class: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_spec: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    registry_dir: str | Path | None = None,
) -> ModelSpec:
    """Save ``model``'s state dict as ``<name>.pt``, its card as ``<name>.md``, and register it.

    The model must be rebuildable as ``ARCHITECTURES[architecture](**arch_kwargs)`` (checked by
    loading the state dict into a fresh instance before anything is written).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        build_model(architecture, arch_kwargs).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"model does not match {architecture!r}({arch_kwargs}): {exc}") from exc
    directory = weights_dir(registry_dir)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights_file = f"{name}.pt"
    _atomic_write(directory / weights_file, buffer.getvalue())
    card = f"{name}.md"
    _atomic_write(directory / card, card_text.encode("utf-8"))
    return register_model(
        name,
        architecture,
        weights_file,
        version=version,
        class_names=class_names,
        positive_class=positive_class,
        arch_kwargs=arch_kwargs,
        input_spec=input_spec,
        card=card,
        metadata=metadata,
        registry_dir=directory,
    )


def load_model(
    name: str,
    device: str | torch.device = "cpu",
    registry_dir: str | Path | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Build the registered model, verify and load its weights, move it to ``device``, eval mode.

    Raises ModelError when the name is not registered, the weights file is missing, its sha256
    differs from the registry's, or the state dict does not fit the architecture.
    """
    spec = get_spec(name, registry_dir)
    path = spec.weights_path
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"weights file {path} of model {name!r} is missing") from exc
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path} of model {name!r}: {exc}") from exc
    digest = sha256_bytes(data)
    if digest != spec.sha256:
        raise ModelError(
            f"checksum mismatch for model {name!r}: {path} has sha256 {digest}, "
            f"the registry expects {spec.sha256}; refusing to load it"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many exception types for a bad file
        raise ModelError(f"cannot read the state dict in {path}: {exc}") from exc
    model = build_model(spec.architecture, spec.arch_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {path} do not fit {spec.architecture!r}: {exc}") from exc
    model.to(torch.device(device)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info("loaded model %s %s (sha256 %s) on %s", name, spec.version, digest[:12], device)
    return model, spec
