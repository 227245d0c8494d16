"""Export trained checkpoints into the model registry with a model card (``pipeline/weights``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.models.cnn_bert import CnnBert, CnnBertMlp
from pipeline.models.decovnet import DeCoVNet
from pipeline.models.registry import ModelSpec, export_weights
from pipeline.models.unet2d import UNet2D
from pipeline.preprocessing import UNET_WORK_SHAPE_PX, WINDOW_HU_MAX, WINDOW_HU_MIN
from pipeline.stages.classify import (
    CNN_BERT_MLP_MODEL_NAME,
    CNN_BERT_MODEL_NAME,
    DECOVNET_MODEL_NAME,
)
from pipeline.stages.lung_unet import DEFAULT_MODEL_NAME as UNET_MODEL_NAME
from training.cache import KIND_CYCLE, SPLIT_SEED_BASE
from training.train_decovnet import CLASS_NAMES

logger = logging.getLogger(__name__)

UNET_VERSION = "1.1.0-synthetic"  # 1.1: fine-tuned with finding-weighted slices
DECOVNET_VERSION = "1.1.0-synthetic"  # 1.1: CAM supervised with the phantoms' lesion masks
CNN_BERT_VERSION = "1.0.0-synthetic"
CNN_BERT_CLASS_NAMES = ("covid19", "non-covid")  # index 0 = COVID-19, the original's order

NOT_FIT_FOR = """## Not fit for

- Clinical diagnosis or any patient-care decision. It has never seen a labelled real patient
  (see Training data), and its metrics are measured on synthetic phantoms.
- Estimating performance on real scanners, protocols or patient populations: the phantoms'
  anatomy, texture and lesion appearance are simplified models, not a sample of real CT.
- Paediatric, contrast-enhanced, post-surgical or non-chest CT, which the phantoms do not cover.
"""


def _threads_text(config: dict[str, Any]) -> str:
    threads = config.get("threads")
    if threads is None:
        return "one CPU thread"
    return f"{config.get('device', 'cpu')} with {threads} thread(s)"


def _window_text(config: dict[str, Any]) -> str:
    if config.get("full_from_step") == 0:
        return "Every step sees a whole volume."
    return (f"To fit the CPU budget, the steps before {config.get('full_from_step')} (or before "
            f"{1.0 - float(config.get('full_volume_share', 0.1)):.0%} of the time budget) see a "
            f"window of {config.get('window_slices')} consecutive 1-mm slices (around a finding "
            "when the case has one), the later steps whole volumes.")


def _finetune_text(config: dict[str, Any]) -> str:
    """Where a fine-tuned run started: the base checkpoint's run, when it is still there."""
    init = config.get("init_from")
    if not init:
        return ""
    base = Path(init)
    text = f" Fine-tuned from the weights of `{base.name}`"
    if base.exists():
        payload = torch.load(base, map_location="cpu", weights_only=False)
        cfg = payload.get("config", {})
        text += (f" (a run of {int(payload.get('step', 0))} steps, "
                 f"{float(payload.get('elapsed_s', 0.0)) / 60.0:.1f} min, lr {cfg.get('lr')}, "
                 f"{cfg.get('n_slices', cfg.get('n_cases', '?'))} training samples"
                 + (f", windows of {cfg['window_slices']} slices then whole volumes"
                    if cfg.get("window_slices") and cfg.get("full_from_step") else "")
                 + ")")
    return text + "."


def _slice_sampling_text(config: dict[str, Any]) -> str:
    share = config.get("finding_slice_share")
    if share is None:
        return "drawn at random"
    return (f"{share:.0%} of them drawn from the slices holding a finding (where the lung "
            "boundary meets consolidation), the rest at random")


def _history_summary(payload: dict[str, Any]) -> str:
    history = payload.get("history", [])
    if not history:
        return "no loss history recorded"
    first, last = history[0], history[-1]
    return (f"mean loss {first['loss']:.4f} at step {first['step']} -> {last['loss']:.4f} at "
            f"step {last['step']}")


def _metrics_section(metrics: dict[str, Any], keys: list[tuple[str, str]]) -> str:
    if not metrics:
        return "Not evaluated yet (run `python -m training evaluate`, then export again).\n"
    lines: list[str] = []
    for key, text in keys:
        value = metrics
        for part in key.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if isinstance(value, int | float):
            lines.append(f"- {text}: {value:.4f}")
    return "\n".join(lines) + "\n" if lines else "No metrics available.\n"


def export_model(
    which: str, work_dir: Path, metrics: dict[str, Any], registry_dir: Path | None = None,
    crop_px: tuple[int, int] = (112, 168),
    run_name: str | None = None,
) -> ModelSpec:
    """Export ``which`` ("unet", "decovnet" or "cnn-bert") from
    ``work_dir/checkpoints/<run_name>.pt`` (default run name: "unet", "decovnet", "cnn_bert")
    with its model card."""
    name = run_name or {"unet": "unet", "decovnet": "decovnet", "cnn-bert": "cnn_bert"}.get(
        which, which)
    ckpt_path = work_dir / "checkpoints" / f"{name}.pt"
    if not ckpt_path.exists():
        raise FileNotFoundError(f"no checkpoint {ckpt_path}; train first")
    payload = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    config = payload.get("config", {})
    minutes = float(payload.get("elapsed_s", 0.0)) / 60.0
    steps = int(payload.get("step", 0))
    metadata: dict[str, Any] = {
        "trained_steps": steps, "training_minutes": round(minutes, 1),
        "training_data": "synthetic phantoms (training.synthetic)", "run": name}
    if config.get("real_volumes"):
        metadata["training_data"] += " and real studies: " + ", ".join(config["real_volumes"])
    if config.get("init_from"):
        metadata["fine_tuned_from"] = Path(str(config["init_from"])).name
    if which == "unet":
        model: torch.nn.Module = UNet2D()
        model.load_state_dict(payload["model"])
        card = _unet_card(config, steps, minutes, payload, metrics)
        return export_weights(
            model, UNET_MODEL_NAME, "unet2d", version=UNET_VERSION, card_text=card,
            class_names=("background", "lung"),
            input_spec={"work_shape_px": list(UNET_WORK_SHAPE_PX),
                        "window_hu": [WINDOW_HU_MIN, WINDOW_HU_MAX]},
            metadata=metadata,
            registry_dir=registry_dir,
        )
    if which == "decovnet":
        dmodel = DeCoVNet(num_classes=len(CLASS_NAMES))
        dmodel.load_state_dict(payload["model"])
        card = _decovnet_card(config, steps, minutes, payload, metrics, crop_px)
        return export_weights(
            dmodel, DECOVNET_MODEL_NAME, "decovnet", version=DECOVNET_VERSION, card_text=card,
            class_names=CLASS_NAMES, positive_class="covid19",
            arch_kwargs={"num_classes": len(CLASS_NAMES)},
            input_spec={"crop_shape_px": list(crop_px), "slice_spacing_mm": 1.0,
                        "window_hu": [WINDOW_HU_MIN, WINDOW_HU_MAX]},
            metadata=metadata,
            registry_dir=registry_dir,
        )
    if which == "cnn-bert":
        return _export_cnn_bert(payload, ckpt_path, config, steps, minutes, metrics, metadata,
                                registry_dir)
    raise ValueError(f"unknown model {which!r}")


def _export_cnn_bert(
    payload: dict[str, Any], ckpt_path: Path, config: dict[str, Any], steps: int,
    minutes: float, metrics: dict[str, Any], metadata: dict[str, Any],
    registry_dir: Path | None,
) -> ModelSpec:
    """The backbone+BERT and its MLP head (``<run>_mlp.pt`` beside the checkpoint), one card."""
    arch = {"depth": int(config["depth"]), "base_width": int(config["base_width"]),
            "num_classes": len(CNN_BERT_CLASS_NAMES)}
    backbone = CnnBert(**arch)
    backbone.load_state_dict(payload["model"])
    mlp_path = ckpt_path.with_name(ckpt_path.stem + "_mlp.pt")
    if not mlp_path.exists():
        raise FileNotFoundError(f"no MLP head {mlp_path}; the training run did not finish")
    mlp = CnnBertMlp(in_features=2 * backbone.embedding_dim,
                     num_classes=len(CNN_BERT_CLASS_NAMES))
    mlp.load_state_dict(torch.load(mlp_path, map_location="cpu", weights_only=True))
    card = _cnn_bert_card(config, steps, minutes, payload, metrics)
    common: dict[str, Any] = {
        "version": CNN_BERT_VERSION, "card_text": card, "class_names": CNN_BERT_CLASS_NAMES,
        "positive_class": "covid19", "metadata": metadata, "registry_dir": registry_dir}
    export_weights(mlp, CNN_BERT_MLP_MODEL_NAME, "cnn-bert-mlp",
                   arch_kwargs={"in_features": 2 * backbone.embedding_dim,
                                "num_classes": len(CNN_BERT_CLASS_NAMES)}, **common)
    return export_weights(
        backbone, CNN_BERT_MODEL_NAME, "cnn-bert", arch_kwargs=arch,
        input_spec={"resize_px": int(config["resize_px"]), "size_px": int(config["crop_px"]),
                    "frames": backbone.frames},
        **common)


def _cnn_bert_card(config: dict[str, Any], steps: int, minutes: float, payload: dict[str, Any],
                   metrics: dict[str, Any]) -> str:
    return f"""# cnn-bert {CNN_BERT_VERSION} (with its MLP head cnn-bert-mlp)

3D-CNN-BERT (models.md §2): an R(2+1)D backbone of depth **{config.get('depth')}** and base
width **{config.get('base_width')}** (the paper: depth 34, width 64; reduced for CPU training
time), one BERT layer with a learned class token over the 32-frame set, and an MLP over the
max- and mean-pooled class-token embeddings of every 32-slice set of a scan. Classes
{CNN_BERT_CLASS_NAMES} (index 0 = COVID-19). Used by `pipeline.stages.classify.CnnBertClassifier`
when `[pipeline] classifier = "cnn-bert"`; it produces no activation map, so lesions then come
from the localizer's intensity fallback.

## Input
`pipeline.slices`: the adaptive slice range of the lung fraction, 32-slice sets (random
resampling in training, sequential sets at inference), RML channels resized to
{config.get('resize_px')} and centre-cropped to {config.get('crop_px')} px (the paper: 280 / 224).

## Training data
{_data_section(config.get('n_cases', '?'))}
Lung masks are the phantoms' ground truth.

## Training settings
Backbone + BERT: Adam lr {config.get('lr')} (the paper: AdamW), no weight decay, cross
entropy on single random sets, classes drawn 50/50, random horizontal flip; seed
{config.get('seed')}, {steps} steps, {minutes:.1f} min on
{_threads_text(config)}; {_history_summary(payload)}. MLP head: full-batch Adam on the pooled
embeddings of the training scans.

## Measured (held-out synthetic phantoms, `docs/evaluation/report.md`)
{_metrics_section(metrics, [("classification_cnn_bert.roc_auc", "ROC AUC (COVID vs non-COVID)"),
                            ("classification_cnn_bert.f1", "F1 at p = 0.5"),
                            ("classification_cnn_bert.sensitivity", "sensitivity at p = 0.5"),
                            ("classification_cnn_bert.specificity", "specificity at p = 0.5")])}
{NOT_FIT_FOR}"""


def _real_text(metrics: dict[str, Any]) -> str:
    """The real studies' predictions, one line each (anecdotes, not a test set)."""
    real = metrics.get("real") or []
    if not real:
        return ""
    lines = ["Real studies (COVID-CT-MD, two cases; anecdotes, not a test set):"]
    for r in real:
        right = bool(r["covid_positive"]) == (r["predicted_label"] == "covid19")
        lines.append(f"- {r['case']} ({r['diagnosis']}): p(COVID-19) {r['p_covid']:.3f}, "
                     f"predicted {r['predicted_label']} ({'correct' if right else 'wrong'})")
    return "\n".join(lines) + "\n"


def _augment_text(config: dict[str, Any]) -> str:
    if config.get("augment") == "none":
        return ("No augmentation (trial runs with it did not generalise within the step "
                "budget; see docs/evaluation/report.md).")
    if not config.get("affine", True):
        return (f"No affine; brightness 1 +- {config.get('brightness_delta')} and contrast "
                f"1 +- {config.get('contrast_delta')} per volume (the paper: an affine, and "
                "0.5 / 0.3).")
    return (f"One random affine per volume (rotation +-10 deg, translation +-10 %, scale "
            f"1 +- 0.2, shear +-10 deg) plus brightness 1 +- {config.get('brightness_delta')} "
            f"and contrast 1 +- {config.get('contrast_delta')} (the paper: 0.5 / 0.3).")


def _init_text(config: dict[str, Any]) -> str:
    if config.get("reinit_classifier", False):
        return ("The two linear layers start from PyTorch's default initialisation instead of "
                "the paper's N(0, 0.01), which left the loss at chance level in trial runs.")
    return "Initialisation as the paper."


def _aux_text(config: dict[str, Any]) -> str:
    weight = float(config.get("aux_lesion_cam_weight", 0.0) or 0.0)
    if weight > 0:
        return (f"**Not weakly supervised, unlike the paper.** An auxiliary loss (weight "
                f"{weight}) trains the linearised COVID-class CAM, voxel by voxel on the feature "
                "grid, against the phantoms' lesion masks: positive on COVID-like findings, "
                "negative everywhere else, look-alike consolidations and masses included "
                "(balanced binary cross entropy). The localizer's CAM therefore reflects what "
                "synthetic lesions look like; on real CT it has only been checked against the "
                "slice-level labels of two studies.")
    weight = float(config.get("aux_slice_cam_weight", 0.0) or 0.0)
    if weight <= 0:
        return ""
    return (f"An auxiliary loss (weight {weight}, not in the paper) supervises the per-slice "
            "maximum of the linearised COVID-class CAM with the phantoms' slice-level lesion "
            "presence (binary cross entropy).")


def _data_section(n_cases: int | str) -> str:
    base = SPLIT_SEED_BASE["train"]
    return (
        f"Synthetic chest CT phantoms from `training/synthetic` (seeded numpy/scipy generator), "
        f"training split seeds {base}..{base}+N (N = {n_cases} cases used), kinds cycling "
        f"{'/'.join(KIND_CYCLE)} (half COVID-like: peripheral subpleural ground glass and "
        f"consolidation; half look-alikes: lobar consolidation, central mass, normal lungs, some "
        f"with dependent atelectasis), 256 x 256 matrix, 1-3 mm slices. Evaluation uses the "
        f"disjoint test seeds {SPLIT_SEED_BASE['test']}.. .\n"
    )


def _unet_card(config: dict[str, Any], steps: int, minutes: float, payload: dict[str, Any],
               metrics: dict[str, Any]) -> str:
    return f"""# unet2d-lungs {UNET_VERSION}

DeCoVNet's 2D U-Net (models.md §1.3; 839,506 parameters) segmenting lung vs background on axial
slices, as `pipeline.stages.lung_unet.UNetLungSegmenter` feeds it.

## Input
The threshold lung box of the volume (`preprocessing.coarse_lung_box`), HU window
[{WINDOW_HU_MIN:.0f}, {WINDOW_HU_MAX:.0f}] mapped to [0, 1], resized to
{UNET_WORK_SHAPE_PX[0]} x {UNET_WORK_SHAPE_PX[1]} (`preprocessing.unet_input`). Output: 2-class
logits (index 1 = lung).

## Training data
{_data_section(config.get('n_slices', '?'))}
24 slices of each phantom's lung box with its ground-truth lungs (trachea and main
bronchi excluded, lesions included), {_slice_sampling_text(config)},
plus slices of one real study of COVID-CT-MD
(cap002, labels = the morphological segmenter's lungs) and three copies of it with synthetic
lesions inserted inside those lungs. Slices used: {config.get('n_slices', '?')}.

## Training settings
Adam lr {config.get('lr')}, no weight decay, cross entropy, batch {config.get('batch')} slices,
brightness 1 +- 0.5 and contrast 1 +- 0.3 (affine off, as the paper), seed
{config.get('seed')}, {steps} steps, {minutes:.1f} min on {_threads_text(config)};
{_history_summary(payload)}.{_finetune_text(config)}

## Measured (held-out synthetic phantoms, `docs/evaluation/report.md`)
{_metrics_section(metrics, [("lungs.unet.dice_both_mean", "lung Dice (both lungs), mean"),
                            ("lungs.unet.dice_both_min", "lung Dice (both lungs), minimum"),
                            ("lungs.morphological.dice_both_mean",
                             "for comparison, morphological segmenter Dice, mean")])}
{NOT_FIT_FOR}"""


def _real_training_text(config: dict[str, Any]) -> str:
    """What real studies a run trained on (``train-decovnet --real-cases``): a card must say."""
    real = config.get("real_volumes") or []
    if not real:
        return "No real study was trained on.\n"
    return ("**Real studies trained on** (weak slice labels, multiple-instance CAM loss; "
            "lesion-inserted copies; drawn in "
            f"{float(config.get('real_share', 0)):.0%} of a class's steps): "
            + ", ".join(f"`{v}`" for v in real)
            + ". Figures about these studies from this model are in-sample, not evaluations.\n")


def _decovnet_card(config: dict[str, Any], steps: int, minutes: float, payload: dict[str, Any],
                   metrics: dict[str, Any], crop_px: tuple[int, int]) -> str:
    return f"""# decovnet {DECOVNET_VERSION}

DeCoVNet (models.md §1.5, forward path only, 346,978 parameters), two classes
{CLASS_NAMES} (index 1 = COVID-19), used by `pipeline.stages.classify.DeCoVNetClassifier` and
its CAM by `pipeline.stages.localize.CamLesionLocalizer`.

## Input
`preprocessing.decovnet_input`: lung bounding box, window [{WINDOW_HU_MIN:.0f},
{WINDOW_HU_MAX:.0f}] HU as uint8 levels / 255, slices resampled to 1 mm, in-plane resized to
**{crop_px[0]} x {crop_px[1]}** (the paper uses 224 x 336; reduced for CPU training time; the
stage reads `crop_shape_px` from this registry entry), channel 2 = lung mask.

## Training data
{_data_section(config.get('n_cases', '?'))}
The mask channel comes from the ground-truth lungs for about half of the cases and from the
morphological segmenter for the other half, so both kinds of mask are seen.
{_real_training_text(config)}
## Training settings
Adam lr {config.get('lr')} (the paper's 1e-5 raised for the CPU time budget), no weight decay,
cross entropy, batch 1 volume, classes drawn 50/50 (oversampling). {_augment_text(config)}
{_init_text(config)} {_aux_text(config)}
{_window_text(config)} Seed {config.get('seed')},
{steps} steps, {minutes:.1f} min on {_threads_text(config)}; {_history_summary(payload)}.
{_finetune_text(config)}

## Measured (held-out synthetic phantoms, `docs/evaluation/report.md`)
{_metrics_section(metrics, [("classification.roc_auc", "ROC AUC (COVID vs non-COVID)"),
                            ("classification.f1", "F1 at p = 0.5"),
                            ("classification.sensitivity", "sensitivity at p = 0.5"),
                            ("classification.specificity", "specificity at p = 0.5"),
                            ("localization.cam_share",
                             "share of COVID cases whose lesions came from the CAM (the rest "
                             "from the intensity fallback)"),
                            ("localization.hit_rate_largest",
                             "lesion hit rate (largest lesion, DeCoVNet definition)"),
                            ("localization.hit_rate_union", "lesion hit rate (all lesions)"),
                            ("localization.lesion_dice_mean", "lesion Dice, mean")])}
{_real_text(metrics)}
{NOT_FIT_FOR}- Telling COVID-19 from other pneumonias on real CT: see the real studies above.
"""
