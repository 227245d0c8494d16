"""Train a light 3D-CNN-BERT and its MLP head on phantom volumes, as the classifier stage feeds it.

Inputs follow models.md §2.2-§2.4 through ``pipeline.slices``: the adaptive slice range of the
lung fraction (training span >= 8), 32 slices drawn with the random resampler, RML channels
resized and centre-cropped (a reduced ``resize_px`` / ``crop_px`` for CPU time, recorded in the
registry so the stage uses the same), random horizontal flip. Backbone + BERT are trained on
single sets with cross entropy (Adam without weight decay; the paper used AdamW); the MLP head
is then trained on the max- and mean-pooled CLS embeddings of every evaluation set of each scan
(Adam, §2.6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from pipeline.models.cnn_bert import CnnBert, CnnBertMlp, pool_set_embeddings
from pipeline.slices import (
    MIN_SPAN_TRAIN,
    lung_fraction_per_slice,
    random_resample,
    rml_set,
    rml_slices,
    select_slice_range,
    sequential_sets,
)
from training.cache import load_case
from training.checkpoint import TrainState
from training.loop import LoopConfig, run_training

logger = logging.getLogger(__name__)

CNN_BERT_RESIZE_PX = 140
CNN_BERT_CROP_PX = 112
MLP_EPOCHS = 200
MLP_LR = 1e-3


@dataclass(frozen=True)
class ScanSlices:
    """RML channels of a scan's selected slice range (3 x n x crop x crop) and its label."""

    rml: npt.NDArray[np.float32]
    label: int


def scan_slices(path: Path, resize_px: int, crop_px: int) -> ScanSlices:
    """The stage's RML input of a cached phantom (ground-truth lungs), training slice range."""
    case = load_case(path)
    mask = case.lungs
    first, stop = select_slice_range(lung_fraction_per_slice(mask), MIN_SPAN_TRAIN)
    rml = rml_slices(case.hu[first:stop], mask[first:stop], resize_px=resize_px, crop_px=crop_px)
    return ScanSlices(rml=rml.astype(np.float16), label=int(case.is_covid))


def train_cnn_bert(
    case_paths: list[Path],
    checkpoint_path: Path,
    *,
    max_steps: int,
    max_minutes: float,
    depth: int = 10,
    base_width: int = 16,
    lr: float = 1e-4,
    seed: int = 0,
    resume: bool = False,
    device: torch.device | None = None,
    resize_px: int = CNN_BERT_RESIZE_PX,
    crop_px: int = CNN_BERT_CROP_PX,
    mlp_epochs: int = MLP_EPOCHS,
) -> tuple[CnnBert, CnnBertMlp, TrainState]:
    """Train the backbone+BERT on random 32-slice sets, then the MLP head on pooled embeddings.

    The MLP is saved next to the checkpoint as ``<stem>_mlp.pt`` (state dict only).
    """
    dev = device or torch.device("cpu")
    scans = [scan_slices(p, resize_px, crop_px) for p in case_paths]
    by_class = {c: [s for s in scans if s.label == c] for c in (0, 1)}
    if not by_class[0] or not by_class[1]:
        raise ValueError("training needs both COVID and non-COVID cases")
    # class index 0 = covid19, 1 = non-covid as the original's alphabetical order
    model = CnnBert(depth=depth, base_width=base_width).to(dev)

    def step(m: torch.nn.Module, rng: np.random.Generator) -> torch.Tensor:
        cls = int(rng.integers(0, 2))
        pool = by_class[cls]
        scan = pool[int(rng.integers(0, len(pool)))]
        idx = random_resample(scan.rml.shape[1], rng, model.frames)
        x = torch.from_numpy(rml_set(scan.rml, idx).astype(np.float32))
        if rng.uniform() < 0.5:
            x = torch.flip(x, dims=[-1])
        logits, _ = m(x[None].to(dev))
        target = torch.tensor([0 if cls == 1 else 1], device=dev)
        return F.cross_entropy(logits, target)

    cfg = LoopConfig(max_steps=max_steps, max_minutes=max_minutes, lr=lr, seed=seed,
                     checkpoint_every=50, weight_decay=0.0)
    record = {"depth": depth, "base_width": base_width, "lr": lr, "resize_px": resize_px,
              "crop_px": crop_px, "n_cases": len(scans), "seed": seed}
    state = run_training(model, step, cfg, checkpoint_path, resume, record, "train-cnn-bert")
    model.eval()
    features, labels = [], []
    with torch.inference_mode():
        for scan in scans:
            sets = sequential_sets(scan.rml.shape[1], model.frames)
            batch = np.stack([rml_set(scan.rml, s).astype(np.float32) for s in sets])
            _, emb = model(torch.from_numpy(batch).to(dev))
            features.append(pool_set_embeddings(emb.float().cpu()))
            labels.append(0 if scan.label == 1 else 1)
    mlp = train_mlp(torch.stack(features), torch.tensor(labels), mlp_epochs, seed)
    torch.save(mlp.state_dict(), checkpoint_path.with_name(checkpoint_path.stem + "_mlp.pt"))
    return model.cpu(), mlp, state


def train_mlp(features: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> CnnBertMlp:
    """Full-batch Adam training of the MLP head on pooled embeddings (N x 2D)."""
    torch.manual_seed(seed)
    mlp = CnnBertMlp(in_features=int(features.shape[1]))
    opt = torch.optim.Adam(mlp.parameters(), lr=MLP_LR)
    mlp.train()
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(mlp(features), labels)
        loss.backward()
        opt.step()
    mlp.eval()
    logger.info("MLP head: final training loss %.4f", float(loss.detach()))
    return mlp
