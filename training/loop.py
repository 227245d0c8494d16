"""A small, resumable training loop shared by the U-Net and DeCoVNet trainers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.checkpoint import TrainState, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

LOG_EVERY_STEPS = 10


@dataclass(frozen=True)
class LoopConfig:
    """Stopping rule, checkpointing and optimiser settings of one run."""

    max_steps: int
    max_minutes: float
    lr: float
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    seed: int = 0


StepFn = Callable[[nn.Module, np.random.Generator], torch.Tensor]


def run_training(
    model: nn.Module,
    step_fn: StepFn,
    cfg: LoopConfig,
    checkpoint_path: Path,
    resume: bool,
    config_record: dict[str, Any],
    desc: str,
) -> TrainState:
    """Adam steps of ``step_fn`` (returns the loss of one batch) until ``max_steps`` or time.

    With ``resume`` and an existing checkpoint, model, optimiser, step count and random states
    continue from it; the time budget counts this invocation only.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    state = TrainState()
    if resume and checkpoint_path.exists():
        state, _ = load_checkpoint(checkpoint_path, model, optimizer, rng)
    elif resume:
        logger.info("no checkpoint at %s: starting from scratch", checkpoint_path)
    model.train()
    started = time.perf_counter()
    deadline = started + cfg.max_minutes * 60.0
    losses: list[float] = []
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=desc, unit="step")
    base_elapsed = state.elapsed_s
    while state.step < cfg.max_steps and time.perf_counter() < deadline:
        optimizer.zero_grad(set_to_none=True)
        loss = step_fn(model, rng)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {state.step}")
        loss.backward()
        optimizer.step()
        state.step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        if state.step % LOG_EVERY_STEPS == 0:
            mean_loss = float(np.mean(losses[-LOG_EVERY_STEPS:]))
            state.elapsed_s = base_elapsed + time.perf_counter() - started
            state.history.append({"step": state.step, "loss": mean_loss,
                                  "elapsed_s": state.elapsed_s})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if state.step % cfg.checkpoint_every == 0:
            state.elapsed_s = base_elapsed + time.perf_counter() - started
            save_checkpoint(checkpoint_path, model, optimizer, state, rng, config_record)
    bar.close()
    state.elapsed_s = base_elapsed + time.perf_counter() - started
    save_checkpoint(checkpoint_path, model, optimizer, state, rng, config_record)
    logger.info("%s: %d steps, %.1f min in total", desc, state.step, state.elapsed_s / 60.0)
    model.eval()
    return state
