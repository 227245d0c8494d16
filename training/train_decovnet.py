"""Train DeCoVNet (COVID-19 vs non-COVID) on phantom volumes, with the stage's own input builder.

Inputs are ``preprocessing.decovnet_input`` outputs (lung box, [-1200, 600] window, 1-mm slices,
in-plane resize to the registered crop shape), cached on disk as uint8. The stage reads the crop
shape from the registry, so training at a reduced in-plane size (112 x 168 by default) is used
unchanged at inference; the 1-mm slice spacing is fixed by the stage. To fit the CPU budget most
steps see a window of consecutive slices (centred on a finding where the case has one; DeCoVNet's
head max-pools, so a finding anywhere makes a volume positive), and the last part of the run sees
whole volumes. Recipe (models.md §1.5): batch 1, cross entropy, Adam, the minority class
oversampled, one random affine + brightness/contrast per volume.

Beyond the paper, which trains on volume labels only, the phantoms' voxel lesion masks supervise
the COVID-class activation map the localizer reads (``lesion_cam_loss``): without it, runs of the
length this CPU affords left the linearised CAM negative everywhere. A run trained this way is not
weakly supervised, and its model card says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from pipeline.models.decovnet import DeCoVNet
from pipeline.preprocessing import decovnet_input, resize, sample_axis
from pipeline.series import volume_from_array
from pipeline.stages.cam import feature_cam, normalise_cam
from pipeline.stages.localize import INTENSITY_LEVEL_MIN, top_share_threshold
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from training.augment import DECOVNET_AUGMENT, AugmentConfig, augment_volume
from training.cache import load_case
from training.checkpoint import TrainState, load_weights
from training.loop import LoopConfig, run_training
from training.metrics import lesion_hit
from training.mil_loss import real_cam_loss

logger = logging.getLogger(__name__)

DECOVNET_TRAIN_CROP_PX = (112, 168)
DECOVNET_WINDOW_SLICES = 48
DECOVNET_LR = 3e-4
# Milder brightness/contrast than the paper (1 +- 0.5 / 1 +- 0.3): with a few hundred steps the
# paper's ranges kept the loss at chance level in trial runs.
DECOVNET_TRAIN_AUGMENT = replace(DECOVNET_AUGMENT, brightness_delta=0.2, contrast_delta=0.15)
DECOVNET_AUX_WEIGHT = 1.0
LESION_TARGET_MIN_SHARE = 0.5  # a crop voxel is lesion where its resampled mask is >= this
AUGMENT_PRESETS = {
    "paper": DECOVNET_AUGMENT,
    "mild": DECOVNET_TRAIN_AUGMENT,
    "intensity": replace(DECOVNET_TRAIN_AUGMENT, affine=False),
    "none": AugmentConfig(affine=False, brightness_delta=0.0, contrast_delta=0.0),
}
CLASS_NAMES = ("non-covid", "covid19")  # index 1 = COVID-19, as in the paper
REAL_AUGMENT = "paper"  # real studies: the paper's full ranges (heavy), plus left-right mirror
MORPHOLOGICAL_MASK_SHARE = 0.5  # share of cases whose mask channel comes from the morphology


@dataclass(frozen=True)
class PreparedVolume:
    """A cached DeCoVNet input: uint8 image levels and mask (T x H x W), label, findings."""

    image: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.uint8]
    label: int
    kind: str
    seed: int
    finding_per_slice: npt.NDArray[np.int32]  # finding voxels per crop slice (0 for normal)
    lesion: npt.NDArray[np.uint8]  # 0/1 finding voxels of the crop (look-alikes included)
    # real studies only (``training.real_cases``): per crop slice 1 = the COVID-class activation
    # must fire somewhere, 0 = it must stay at zero outside ``lesion``; None for phantoms
    slice_label: npt.NDArray[np.int8] | None = None

    @property
    def is_real(self) -> bool:
        return self.slice_label is not None

    def tensor(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The network input 2 x T x H x W in [0, 1] for slices [start, stop)."""
        img = torch.from_numpy(self.image[start:stop]).float().div_(255.0)
        msk = torch.from_numpy(self.mask[start:stop]).float()
        return torch.stack([img, msk])

    def lesion_tensor(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The finding mask of slices [start, stop) as a 1 x T x H x W float tensor."""
        return torch.from_numpy(self.lesion[start:stop]).float()[None]


def prepare_case(
    path: Path, crop_px: tuple[int, int], use_morphology: bool,
    segmenter: MorphologicalLungSegmenter | None = None,
) -> PreparedVolume:
    """Build the stage's input for a cached phantom with ground-truth or morphological lungs."""
    case = load_case(path)
    lungs = case.lungs
    if use_morphology:
        seg = segmenter or MorphologicalLungSegmenter()
        morph = seg.segment(volume_from_array(case.hu, case.spacing_mm)).both
        if morph.sum() > 0.5 * lungs.sum():  # a failed morphology falls back to ground truth
            lungs = morph
    prepared = decovnet_input(case.hu, lungs, case.spacing_mm[0], crop_px)
    geo = prepared.geometry
    lesion_box = case.lesion_mask[geo.box.slices].astype(np.float32)
    lesion = sample_axis(lesion_box, 0, geo.z_coords, order=1)
    lesion = resize(lesion, crop_px, order=1) >= LESION_TARGET_MIN_SHARE
    per_crop = lesion.sum(axis=(1, 2))
    arr = prepared.array
    return PreparedVolume(
        image=np.rint(arr[0] * 255.0).astype(np.uint8),
        mask=(arr[1] > 0.5).astype(np.uint8),
        label=int(case.is_covid),
        kind=case.kind,
        seed=case.seed,
        finding_per_slice=per_crop.astype(np.int32),
        lesion=lesion.astype(np.uint8),
    )


def prepared_file(root: Path, split: str, seed: int) -> Path:
    return root / "decovnet" / split / f"input_{seed}.npz"


def save_prepared(p: PreparedVolume, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    extra: dict[str, Any] = {} if p.slice_label is None else {"slice_label": p.slice_label}
    np.savez(tmp, image=p.image, mask=p.mask, label=p.label, kind=p.kind, seed=p.seed,
             finding=p.finding_per_slice, lesion=np.packbits(p.lesion), **extra)
    tmp.replace(path)


def is_current(path: Path) -> bool:
    """Whether a cached input exists and holds everything ``load_prepared`` needs."""
    if not path.exists():
        return False
    with np.load(path) as d:
        return "lesion" in d.files


def load_prepared(path: Path) -> PreparedVolume:
    with np.load(path) as d:
        image = d["image"]
        lesion = np.unpackbits(d["lesion"], count=image.size).reshape(image.shape)
        slice_label = d["slice_label"] if "slice_label" in d.files else None
        return PreparedVolume(image, d["mask"], int(d["label"]), str(d["kind"]),
                              int(d["seed"]), d["finding"], lesion, slice_label)


def prepare_split(
    root: Path, split: str, case_paths: list[Path], crop_px: tuple[int, int], seed: int,
) -> list[Path]:
    """Prepare (or keep) the cached inputs of ``case_paths``; the mask source is drawn per case."""
    rng = np.random.default_rng(seed)
    segmenter = MorphologicalLungSegmenter()
    out: list[Path] = []
    for path in tqdm(case_paths, desc=f"DeCoVNet inputs {split}", unit="case"):
        use_morph = bool(rng.uniform() < MORPHOLOGICAL_MASK_SHARE)
        case_seed = int(path.stem.split("_")[-1])
        target = prepared_file(root, split, case_seed)
        if not is_current(target):
            save_prepared(prepare_case(path, crop_px, use_morph, segmenter), target)
        out.append(target)
    return out


def lesion_cam_loss(
    model: DeCoVNet, feats: torch.Tensor, lesion: torch.Tensor, cls: int
) -> torch.Tensor:
    """Voxel-level supervision of the COVID-class CAM (a training aid, not in the paper).

    ``cam = w . F`` (the linearised CAM the localizer reads) is taken as a logit on the feature
    grid. Its target is the share of each feature cell covered by a finding of a COVID case
    (``lesion``, 1 x T x H x W, average-pooled to the grid), and 0 everywhere in a non-COVID case,
    look-alike consolidations and masses included. Binary cross entropy, with the cells that hold
    a finding and those that do not weighted half each, since findings fill a few per cent.
    """
    w = model.cam_weights()[:, CLASS_NAMES.index("covid19")]
    cam = torch.einsum("c,cthw->thw", w, feats[0])
    nt, nh, nw = (int(n) for n in cam.shape)
    target = F.adaptive_avg_pool3d(lesion[None].to(cam.device), (nt, nh, nw))[0, 0]
    target = target * float(cls == CLASS_NAMES.index("covid19"))
    per_cell = F.binary_cross_entropy_with_logits(cam, target, reduction="none")
    positive = target > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        return per_cell.mean()
    n_neg = max(1, per_cell.numel() - n_pos)
    weight = torch.where(positive, 0.5 / n_pos, 0.5 / n_neg)
    return (weight * per_cell).sum()


def choose_window(
    p: PreparedVolume, length: int, rng: np.random.Generator
) -> tuple[int, int]:
    """[start, stop) of a window of ``length`` slices, around a finding slice if there is one."""
    t = p.image.shape[0]
    if t <= length:
        return 0, t
    finding = p.finding_per_slice.astype(np.float64)
    if finding.sum() > 0:
        centre = int(rng.choice(t, p=finding / finding.sum()))
        start = int(rng.integers(max(0, centre - length + 1), min(centre, t - length) + 1))
    else:
        start = int(rng.integers(0, t - length + 1))
    return start, start + length


def draw_volume(
    by_class: dict[int, list[PreparedVolume]], rng: np.random.Generator, real_share: float,
) -> tuple[int, PreparedVolume]:
    """A class drawn 50/50, then a real volume with probability ``real_share`` (if the class
    has one), else a phantom (or a real one when the class has no phantom)."""
    cls = int(rng.integers(0, 2))
    real = [v for v in by_class[cls] if v.is_real]
    synthetic = [v for v in by_class[cls] if not v.is_real]
    pool = real if real and (not synthetic or rng.uniform() < real_share) else synthetic
    return cls, pool[int(rng.integers(0, len(pool)))]


def volume_loss(
    m: torch.nn.Module, v: PreparedVolume, cls: int, window: tuple[int, int],
    rng: np.random.Generator, aug: AugmentConfig, aux_weight: float, dev: torch.device,
) -> torch.Tensor:
    """Cross entropy on the volume label plus the CAM loss: voxel-level on phantoms
    (``lesion_cam_loss``), weak slice-level on real studies (``mil_loss.real_cam_loss``)."""
    start, stop = window
    # the finding mask rides along as a third channel so that the affine moves it too
    both = augment_volume(torch.cat([v.tensor(start, stop), v.lesion_tensor(start, stop)]),
                          rng, aug)
    if v.is_real and rng.uniform() < 0.5:
        both = both.flip(-1)  # left-right mirror: real anatomy is scarce
    logits, feats = m(both[None, :2].to(dev))
    loss = F.cross_entropy(logits, torch.tensor([cls], device=dev))
    if aux_weight <= 0 or not isinstance(m, DeCoVNet):
        return loss
    if v.slice_label is None:
        return loss + aux_weight * lesion_cam_loss(m, feats, both[2:], cls)
    w = m.cam_weights()[:, CLASS_NAMES.index("covid19")]
    cam = torch.einsum("c,cthw->thw", w, feats[0])
    labels = torch.from_numpy(v.slice_label[start:stop].astype(np.int64))
    lung = both[1] > 0.5
    return loss + aux_weight * real_cam_loss(cam, labels, both[2].to(cam.device),
                                             lung.to(cam.device))


def train_decovnet(
    prepared_paths: list[Path],
    checkpoint_path: Path,
    *,
    max_steps: int,
    max_minutes: float,
    full_volume_share: float = 0.15,
    window_slices: int = DECOVNET_WINDOW_SLICES,
    lr: float = DECOVNET_LR,
    seed: int = 0,
    resume: bool = False,
    device: torch.device | None = None,
    reinit_classifier: bool = True,
    augment: str = "mild",
    aux_weight: float = DECOVNET_AUX_WEIGHT,
    init_from: Path | None = None,
    real_share: float = 0.0,
) -> tuple[DeCoVNet, TrainState]:
    """Train DeCoVNet on cached inputs: windows first, whole volumes in the last
    ``full_volume_share`` of the steps or of the time budget, whichever comes first. Classes are
    drawn 50/50 (oversampling); within a class a real study (``slice_label`` set) is drawn with
    probability ``real_share`` when the class has one."""
    dev = device or torch.device("cpu")
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {augment!r}; use {list(AUGMENT_PRESETS)}")
    aug = AUGMENT_PRESETS[augment]
    volumes = [load_prepared(p) for p in prepared_paths]
    by_class = {c: [v for v in volumes if v.label == c] for c in (0, 1)}
    if not by_class[0] or not by_class[1]:
        raise ValueError("training needs both COVID and non-COVID cases")
    model = DeCoVNet(num_classes=len(CLASS_NAMES))
    if reinit_classifier:
        # PyTorch's default Linear init instead of the paper's N(0, 0.01): the product of two
        # 0.01-scale layers gave vanishing logits and no learning within the CPU step budget.
        for layer in model.classifier:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    if init_from is not None:
        # weights only: a fresh optimiser, step count and learning rate
        load_weights(init_from, model)
    model = model.to(dev)
    full_from_step = int(max_steps * (1.0 - full_volume_share))
    full_after_s = time.perf_counter() + max_minutes * 60.0 * (1.0 - full_volume_share)
    progress = {"step": 0}

    def step(m: torch.nn.Module, rng: np.random.Generator) -> torch.Tensor:
        cls, v = draw_volume(by_class, rng, real_share)
        if progress["step"] >= full_from_step or time.perf_counter() >= full_after_s:
            start, stop = 0, v.image.shape[0]
        else:
            start, stop = choose_window(v, window_slices, rng)
        progress["step"] += 1
        return volume_loss(m, v, cls, (start, stop), rng,
                           AUGMENT_PRESETS[REAL_AUGMENT] if v.is_real else aug, aux_weight, dev)

    cfg = LoopConfig(max_steps=max_steps, max_minutes=max_minutes, lr=lr, seed=seed,
                     checkpoint_every=50)
    record = {"lr": lr, "window_slices": window_slices, "full_from_step": full_from_step,
              "full_volume_share": full_volume_share,
              "threads": torch.get_num_threads(), "device": str(dev),
              "n_cases": len(volumes), "seed": seed, "reinit_classifier": reinit_classifier,
              "augment": augment, "affine": aug.affine, "aux_lesion_cam_weight": aux_weight,
              "init_from": str(init_from) if init_from else None,
              "brightness_delta": aug.brightness_delta, "contrast_delta": aug.contrast_delta,
              "real_share": real_share, "real_augment": REAL_AUGMENT,
              "real_volumes": sorted(v.kind for v in volumes if v.is_real)}
    # the step counter must follow a resumed run
    if resume and checkpoint_path.exists():
        progress["step"] = int(torch.load(checkpoint_path, map_location="cpu",
                                          weights_only=False)["step"])
    state = run_training(model, step, cfg, checkpoint_path, resume, record, "train-decovnet")
    return model.cpu(), state


@dataclass(frozen=True)
class ValidationRow:
    """One validation volume: label, p(COVID-19) and, for COVID cases, the crop-space CAM hit."""

    label: int
    p_covid: float
    cam_hit: bool | None


def crop_cam_hit(
    model: DeCoVNet, feats: torch.Tensor, v: PreparedVolume, top_share: float = 0.05
) -> bool:
    """DeCoVNet's hit, approximated in crop space for run selection.

    The COVID-class CAM is upsampled to the crop, ReLU'd, cut at the top-share threshold and
    intersected with the lung mask and the dense-tissue level, as the localizer does; the
    largest component's median voxel must lie in a finding. The report's figures come from the
    full stage (``training.evaluate``), not from this.
    """
    cam = feature_cam(feats, model.cam_weights(), CLASS_NAMES.index("covid19"))
    up = F.interpolate(torch.from_numpy(cam)[None, None], size=v.image.shape, mode="trilinear",
                       align_corners=True)[0, 0].numpy()
    act = normalise_cam(up)
    if float(act.max()) <= 0.0:
        return False
    seed = (act > top_share_threshold(act, top_share)) & (v.image > INTENSITY_LEVEL_MIN)
    seed &= v.mask.astype(bool)
    labels, count = ndimage.label(seed, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return False
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return lesion_hit(labels == int(np.argmax(sizes)), v.lesion.astype(bool))


def validate_prepared(model: DeCoVNet, prepared_paths: list[Path]) -> list[ValidationRow]:
    """Whole cached volumes: p(COVID-19) and the crop-space CAM hit of the COVID cases."""
    model.eval()
    out = []
    with torch.inference_mode():
        for path in prepared_paths:
            v = load_prepared(path)
            logits, feats = model(v.tensor()[None])
            p = torch.softmax(logits.float(), dim=1)[0, CLASS_NAMES.index("covid19")]
            hit = crop_cam_hit(model, feats, v) if v.label == 1 else None
            out.append(ValidationRow(v.label, float(p), hit))
    return out
