"""Training checkpoints: model, optimiser, progress and random states, for resumable runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Progress of a run: optimiser steps done, loss history and free-form metrics."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
    rng: np.random.Generator, config: dict[str, Any],
) -> None:
    """Write atomically (temp file + rename) so an interrupted save never corrupts a resume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": state.step,
        "history": state.history,
        "elapsed_s": state.elapsed_s,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "config": config,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    logger.info("checkpoint step %d -> %s", state.step, path)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
    rng: np.random.Generator,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimiser and random states in place; returns the progress and config."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    rng.bit_generator.state = payload["numpy_rng"]
    torch.set_rng_state(payload["torch_rng"])
    state = TrainState(step=int(payload["step"]), history=list(payload["history"]),
                       elapsed_s=float(payload.get("elapsed_s", 0.0)))
    logger.info("resumed from %s at step %d", path, state.step)
    return state, dict(payload.get("config", {}))


def load_weights(path: Path, model: nn.Module) -> None:
    """Load only the model weights of a checkpoint (to fine-tune with a fresh optimiser); a
    registry weights file (a bare state dict, e.g. ``pipeline/weights/decovnet.pt``) works too."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    is_checkpoint = isinstance(payload, dict) and "model" in payload
    model.load_state_dict(payload["model"] if is_checkpoint else payload)
    logger.info("weights from %s (step %s)", path,
                payload.get("step") if is_checkpoint else "registry")
