"""Train the DeCoVNet 2D U-Net (lungs vs background) on phantom slices, as the stage feeds it.

The inputs are made by the stage's own functions (``preprocessing.coarse_lung_box`` and
``unet_input``): the threshold lung box of a volume, windowed to [0, 1] and resized to the
working shape (160 x 224). Labels are the phantoms' ground-truth lungs; optionally slices of a real
study labelled by the morphological segmenter (with synthetic lesions inserted inside its lungs)
are mixed in so that real CT texture is seen. Recipe (models.md §1.3): Adam lr 1e-3, cross
entropy, brightness 1 +- 0.5 and contrast 1 +- 0.3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.models.unet2d import UNet2D
from pipeline.preprocessing import UNET_WORK_SHAPE_PX, coarse_lung_box, unet_input, unet_target
from pipeline.types import CTVolume
from training.augment import UNET_AUGMENT, augment_slices
from training.cache import load_case
from training.checkpoint import TrainState, load_weights
from training.loop import LoopConfig, run_training

logger = logging.getLogger(__name__)

UNET_SLICES_PER_CASE = 24
UNET_BATCH = 8
UNET_LR = 1e-3
# Share of a case's slices drawn from slices holding a finding: dense consolidation at the
# pleura is where the lung boundary is hardest, and random slices rarely show it.
UNET_FINDING_SLICE_SHARE = 0.5


@dataclass(frozen=True)
class SliceSet:
    """Cached U-Net training slices: uint8 images (N x H x W, window levels) and 0/1 labels."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]
    sources: npt.NDArray[np.str_]
    finding_share: float | None = None  # share of phantom slices drawn from finding slices

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        share = np.nan if self.finding_share is None else self.finding_share  # NaN: unknown
        np.savez(path, images=self.images, labels=self.labels, sources=self.sources,
                 finding_share=np.asarray(share))

    @classmethod
    def load(cls, path: Path) -> SliceSet:
        with np.load(path) as d:
            share = float(d["finding_share"]) if "finding_share" in d.files else float("nan")
            return cls(d["images"], d["labels"], d["sources"],
                       None if np.isnan(share) else share)


def choose_slices(
    count: int,
    n_slices: int,
    rng: np.random.Generator,
    with_finding: npt.NDArray[np.bool_] | None = None,
    finding_share: float = UNET_FINDING_SLICE_SHARE,
) -> npt.NDArray[np.int64]:
    """Sorted distinct indices into ``count`` slices: up to ``finding_share`` of ``n_slices``
    from the slices flagged in ``with_finding``, the rest uniformly from the others."""
    candidates = np.arange(count)
    n = min(n_slices, count)
    flagged = np.zeros(count, dtype=bool) if with_finding is None else with_finding
    n_finding = min(int(round(finding_share * n)), int(flagged.sum()))
    chosen = rng.choice(candidates[flagged], size=n_finding, replace=False)
    others = candidates[~flagged]
    rest = rng.choice(others, size=min(n - n_finding, others.size), replace=False)
    return np.sort(np.concatenate([chosen, rest]).astype(np.int64))


def slices_from_volume(
    hu: npt.NDArray[np.float32],
    spacing_mm: tuple[float, float, float],
    lungs: npt.NDArray[np.bool_],
    n_slices: int,
    rng: np.random.Generator,
    work_shape_px: tuple[int, int] = UNET_WORK_SHAPE_PX,
    findings: npt.NDArray[np.bool_] | None = None,
    finding_share: float = UNET_FINDING_SLICE_SHARE,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """``n_slices`` random slices of the stage's coarse lung box, as the stage builds them.

    With a ``findings`` mask, up to ``finding_share`` of the slices are drawn from the slices
    that hold a finding, the rest uniformly from the others.
    """
    box = coarse_lung_box(hu, spacing_mm)
    if box is None:
        raise ValueError("no internal air: the coarse lung box is empty")
    with_finding: npt.NDArray[np.bool_] | None = None
    if findings is not None:
        with_finding = np.asarray(findings[box.z0:box.z1].any(axis=(1, 2)), dtype=bool)
    z = box.z0 + choose_slices(box.z1 - box.z0, n_slices, rng, with_finding, finding_share)
    x = unet_input(hu, box, z, work_shape_px)[:, 0]
    y = unet_target(lungs, box, z, work_shape_px)
    return (np.rint(x * 255.0).astype(np.uint8), y.astype(np.uint8))


def build_slice_set(
    case_paths: list[Path],
    real_volumes: list[tuple[str, CTVolume, npt.NDArray[np.bool_]]],
    seed: int,
    slices_per_case: int = UNET_SLICES_PER_CASE,
    work_shape_px: tuple[int, int] = UNET_WORK_SHAPE_PX,
    finding_share: float = UNET_FINDING_SLICE_SHARE,
) -> SliceSet:
    """Slices from phantom cases (ground-truth lungs) and real volumes (given lung labels)."""
    rng = np.random.default_rng(seed)
    images, labels, sources = [], [], []
    for path in tqdm(case_paths, desc="U-Net slices", unit="case"):
        case = load_case(path)
        try:
            x, y = slices_from_volume(case.hu, case.spacing_mm, case.lungs, slices_per_case, rng,
                                      work_shape_px, findings=case.lesion_mask,
                                      finding_share=finding_share)
        except ValueError as exc:
            logger.warning("skipping %s: %s", path.name, exc)
            continue
        images.append(x)
        labels.append(y)
        sources += [f"phantom:{case.seed}"] * len(x)
    for name, volume, lung in real_volumes:
        x, y = slices_from_volume(volume.hu, volume.spacing_mm, lung, 2 * slices_per_case, rng,
                                  work_shape_px)
        images.append(x)
        labels.append(y)
        sources += [f"real:{name}"] * len(x)
    return SliceSet(np.concatenate(images), np.concatenate(labels), np.asarray(sources),
                    finding_share)


def train_unet(
    slices: SliceSet,
    checkpoint_path: Path,
    *,
    max_steps: int,
    max_minutes: float,
    batch: int = UNET_BATCH,
    lr: float = UNET_LR,
    seed: int = 0,
    resume: bool = False,
    device: torch.device | None = None,
    init_from: Path | None = None,
) -> tuple[UNet2D, TrainState]:
    """Train a fresh (or resumed) UNet2D on ``slices``; returns the model (eval mode, CPU).

    ``init_from`` starts from a checkpoint's weights with a fresh optimiser (fine-tuning)."""
    dev = device or torch.device("cpu")
    model = UNet2D()
    if init_from is not None:
        load_weights(init_from, model)
    model = model.to(dev)
    n = len(slices.images)
    if n == 0:
        raise ValueError("no training slices")
    images = torch.from_numpy(slices.images)
    labels = torch.from_numpy(slices.labels)

    def step(m: torch.nn.Module, rng: np.random.Generator) -> torch.Tensor:
        idx = torch.from_numpy(rng.choice(n, size=min(batch, n), replace=False))
        x = images[idx].float().div_(255.0)[:, None]
        y = labels[idx].long()
        x, y = augment_slices(x, y, rng, UNET_AUGMENT)
        return F.cross_entropy(m(x.to(dev)), y.to(dev))

    cfg = LoopConfig(max_steps=max_steps, max_minutes=max_minutes, lr=lr, seed=seed,
                     checkpoint_every=100)
    record = {"batch": batch, "lr": lr, "n_slices": n, "seed": seed,
              "threads": torch.get_num_threads(), "device": str(dev),
              "init_from": str(init_from) if init_from else None,
              "finding_slice_share": slices.finding_share}
    state = run_training(model, step, cfg, checkpoint_path, resume, record, "train-unet")
    return model.cpu(), state
