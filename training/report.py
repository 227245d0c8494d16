"""Write the evaluation report (``docs/evaluation/report.md``) and its PNG figures.

Figures use matplotlib with the Agg backend.

Every number in the report comes from the ``evaluate_all`` results passed in and from the
training checkpoints; nothing is typed in by hand.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.evaluate import EXAMPLES_DIR  # noqa: E402

logger = logging.getLogger(__name__)

GOAL_LUNG_DICE = 0.97
GOAL_ROC_AUC = 0.95
GOAL_HIT_RATE = 0.8


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _training_info(work_dir: Path, runs: list[str]) -> dict[str, dict[str, Any]]:
    """Steps, time, loss history and settings of ``runs`` and of the runs they were
    fine-tuned from (``init_from``), base runs first."""
    info: dict[str, dict[str, Any]] = {}
    pending = list(runs)
    while pending:
        name = pending.pop(0)
        path = work_dir / "checkpoints" / f"{name}.pt"
        if name in info or not path.exists():
            continue
        payload = torch.load(path, map_location="cpu", weights_only=False)
        config = payload.get("config", {})
        info[name] = {"steps": int(payload.get("step", 0)),
                      "minutes": float(payload.get("elapsed_s", 0.0)) / 60.0,
                      "history": payload.get("history", []),
                      "config": config}
        if config.get("init_from"):
            pending.append(Path(str(config["init_from"])).stem)
    return dict(sorted(info.items(), key=lambda kv: kv[0] in runs))


def _plot_roc(results: dict[str, Any], out: Path) -> None:
    c = results["classification"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(c["roc_fpr"], c["roc_tpr"], lw=2, label=f"DeCoVNet, AUC {c['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"COVID-19 vs non-COVID, {c['n']} held-out phantoms")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)


def _plot_scores(results: dict[str, Any], out: Path) -> None:
    rows = results["phantoms"]
    kinds = sorted({r["kind"] for r in rows})
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, kind in enumerate(kinds):
        vals = [r["p_covid"] for r in rows if r["kind"] == kind]
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
        ax.scatter(np.full(len(vals), i) + jitter, vals, s=14)
    ax.axhline(0.5, color="k", ls=":", lw=1)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("p(COVID-19)")
    ax.set_title("DeCoVNet output per phantom kind")
    fig.tight_layout()
    fig.savefig(out / "p_covid_by_kind.png", dpi=100)
    plt.close(fig)


def _plot_lung_dice(results: dict[str, Any], out: Path) -> None:
    rows = results["phantoms"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    data = [[r["dice_unet_both"] for r in rows], [r["dice_morph_both"] for r in rows]]
    ax.boxplot(data)
    ax.set_xticks([1, 2], ["U-Net (trained)", "morphological"])
    ax.axhline(GOAL_LUNG_DICE, color="g", ls=":", lw=1, label=f"goal {GOAL_LUNG_DICE}")
    ax.set_ylabel("Dice vs ground-truth lungs")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "lung_dice.png", dpi=100)
    plt.close(fig)


def _plot_training(info: dict[str, dict[str, Any]], out: Path) -> None:
    if not info:
        return
    fig, axes = plt.subplots(1, len(info), figsize=(4.5 * len(info), 3.3), squeeze=False)
    for ax, (name, d) in zip(axes[0], info.items(), strict=True):
        h = d["history"]
        if h:
            ax.plot([p["step"] for p in h], [p["loss"] for p in h], lw=1)
        ax.set_title(f"{name}: {d['steps']} steps, {d['minutes']:.0f} min")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (10-step mean)")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "training_loss.png", dpi=100)
    plt.close(fig)


def _plot_examples(work_dir: Path, out: Path, prefix: str, title: str) -> str | None:
    files = sorted((work_dir / EXAMPLES_DIR).glob(f"{prefix}_*.npz"))
    if not files:
        return None
    fig, axes = plt.subplots(len(files), 2, figsize=(8, 3.6 * len(files)), squeeze=False)
    for row, path in zip(axes, files, strict=True):
        with np.load(path) as d:
            k = len(d["z"]) // 2
            z = int(d["z"][k])
            hu = d["hu"][k].astype(np.float32)
            row[0].imshow(hu, cmap="gray", vmin=-1200, vmax=600)
            for mask, colour in ((d["pred_lungs"][k], "c"), (d["truth"][k], "r"),
                                 (d["pred_lesions"][k], "y")):
                if mask.any():
                    row[0].contour(mask, [0.5], colors=colour, linewidths=0.8)
            name = path.stem.split("_", 1)[1]
            infected = set(d["infected"].tolist())
            tag = ""
            if infected:
                labelled = "labelled infected" if z in infected else "not labelled infected"
                tag = f", {labelled}"
            row[0].set_title(f"{name}: slice {z}{tag}", fontsize=9)
            row[1].imshow(hu, cmap="gray", vmin=-1200, vmax=600)
            row[1].imshow(d["activation"][k].astype(np.float32), cmap="jet", alpha=0.35,
                          vmin=0, vmax=1)
            row[1].set_title("COVID-class CAM", fontsize=9)
            for ax in row:
                ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    name = f"examples_{prefix}.png"
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return name


def _classification_table(c: dict[str, Any]) -> list[str]:
    """The scores at p(COVID-19) >= 0.5 and the mean p per phantom kind, as markdown lines."""
    return [
        "| ROC AUC | accuracy | sensitivity | specificity | precision | F1 | TP | FP | TN | FN |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {_fmt(c['roc_auc'])} | {_fmt(c['accuracy'])} | {_fmt(c['sensitivity'])} | "
        f"{_fmt(c['specificity'])} | {_fmt(c['precision'])} | {_fmt(c['f1'])} | {c['tp']} | "
        f"{c['fp']} | {c['tn']} | {c['fn']} |",
        "",
        "Mean p(COVID-19) per phantom kind: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in c["mean_p_covid_by_kind"].items()) + ".",
        "",
    ]


def _cnn_bert_lines(c: dict[str, Any] | None) -> list[str]:
    """The 3D-CNN-BERT + MLP classifier on the same phantoms (the U-Net lungs), when shipped."""
    if not c:
        return []
    return [
        "### 3D-CNN-BERT + MLP (the alternative classifier, same phantoms and lungs)",
        "",
        *_classification_table(c),
    ]


def _real_misclassified_lines(real: list[dict[str, Any]]) -> list[str]:
    """A plain statement for every real study whose predicted class is wrong."""
    wrong = [r for r in real if bool(r["covid_positive"]) != (r["predicted_label"] == "covid19")]
    return [
        f"**{r['case']} ({r['diagnosis']}) is misclassified** as {r['predicted_label']} "
        f"(p(COVID-19) {_fmt(r['p_covid'])}). The phantoms' non-COVID look-alikes do not stand "
        "for real pneumonias of other causes, so the phantom ROC AUC above says nothing about "
        "telling COVID-19 from other pneumonias on real CT."
        for r in wrong
    ] + ([""] if wrong else [])


def _cam_share_text(loc: dict[str, Any]) -> str:
    share = loc.get("cam_share")
    if share is None:
        return "This evaluation did not record which method produced the lesions."
    if share >= 1.0:
        return ("On every COVID-like phantom the lesions below came from the CAM, none from "
                "the fallback.")
    if share <= 0.0:
        return ("With these weights the COVID-class CAM was empty on every COVID-like phantom, "
                "so **every lesion below comes from the intensity fallback**: these numbers "
                "measure the fallback, not the CAM.")
    return (f"The lesions of {share:.0%} of the COVID-like phantoms came from the CAM, those of "
            "the rest from the intensity fallback (empty CAM).")


def _resolution_lines(res: dict[str, Any] | None) -> list[str]:
    """The U-Net's fast path against running it on every slice and at full resolution."""
    if not res:
        return []
    return [
        f"Resolution (first {res['n']} phantoms): the stage runs the U-Net on slices 4 mm apart "
        "at a 128 x 192 working grid. Against running it on every slice, and on every slice at "
        "the lung box's own pixel size (full resolution, rounded up to a multiple of 16):",
        "",
        "| U-Net run | Dice mean | seconds per case |",
        "|---|---|---|",
        f"| fast path (4 mm, 128 x 192) | {_fmt(res.get('dice_fast_mean'))} | "
        f"{_fmt(res.get('time_fast_s_mean'), 2)} |",
        f"| every slice, 128 x 192 | {_fmt(res.get('dice_every_slice_mean'))} | "
        f"{_fmt(res.get('time_every_slice_s_mean'), 2)} |",
        f"| every slice, full resolution | {_fmt(res.get('dice_full_resolution_mean'))} | "
        f"{_fmt(res.get('time_full_resolution_s_mean'), 2)} |",
        "",
        "The U-Net was trained at the working grid only; at full resolution it sees the lungs "
        "at a larger pixel scale than in training.",
        "",
    ]


def write_report(
    results: dict[str, Any], out: Path, work_dir: Path, runs: list[str] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write ``report.md`` and the figures into ``out``; returns the report path.

    ``runs`` name the checkpoints that were exported (default "unet" and "decovnet"); the runs
    they were fine-tuned from are added. ``notes`` are extra paragraphs (e.g. the trial runs
    that were not exported).
    """
    out.mkdir(parents=True, exist_ok=True)
    info = _training_info(work_dir, runs or ["unet", "decovnet"])
    _plot_roc(results, out)
    _plot_scores(results, out)
    _plot_lung_dice(results, out)
    _plot_training(info, out)
    ex_ph = _plot_examples(work_dir, out, "phantom",
                           "Held-out phantoms: cyan U-Net lungs, red true lesions, "
                           "yellow predicted lesions")
    ex_real = _plot_examples(work_dir, out, "real",
                             "COVID-CT-MD: cyan morphological lungs, yellow predicted lesions")
    c = results["classification"]
    lungs = results["lungs"]
    loc = results["localization"]
    t = results["timings_s"]
    lines = [
        "# Evaluation of the trained models",
        "",
        "Generated by `python -m training evaluate` (`training/evaluate.py`, `training/report.py`)."
        " All models were trained on synthetic phantoms only (`training/synthetic`); the "
        "held-out phantoms use seeds disjoint from training. The stages are the production ones "
        "(`UNetLungSegmenter`, `DeCoVNetClassifier` on the U-Net lungs, `CamLesionLocalizer`).",
        "",
        "**These numbers describe synthetic data. They say nothing about performance on real "
        "patients; the two real studies below are anecdotes, not a test set.**",
        "",
        "## Summary against the goals (held-out synthetic phantoms)",
        "",
        "| metric | goal | measured | met |",
        "|---|---|---|---|",
        f"| lung Dice, U-Net, mean (min) | >= {GOAL_LUNG_DICE} | "
        f"{_fmt(lungs['unet']['dice_both_mean'])} ({_fmt(lungs['unet']['dice_both_min'])}) | "
        f"{_fmt(lungs['unet']['dice_both_mean'] >= GOAL_LUNG_DICE)} |",
        f"| classification ROC AUC | >= {GOAL_ROC_AUC} | {_fmt(c['roc_auc'])} | "
        f"{_fmt(c['roc_auc'] >= GOAL_ROC_AUC)} |",
        f"| lesion hit rate (largest lesion) | >= {GOAL_HIT_RATE} | "
        f"{_fmt(loc['hit_rate_largest'])} | {_fmt(loc['hit_rate_largest'] >= GOAL_HIT_RATE)} |",
        "",
        "## Classification (DeCoVNet, p(COVID-19) >= 0.5)",
        "",
        f"{c['n']} phantoms ({c['n_covid']} COVID-like, {c['n'] - c['n_covid']} look-alikes).",
        "",
        *_classification_table(c),
        "![ROC](roc.png) ![scores](p_covid_by_kind.png)",
        "",
        *_cnn_bert_lines(results.get("classification_cnn_bert")),
        "## Lung segmentation (Dice against the phantoms' ground truth)",
        "",
        "| segmenter | both lungs mean | min | median | left mean | right mean |",
        "|---|---|---|---|---|---|",
        f"| U-Net (trained) | {_fmt(lungs['unet']['dice_both_mean'])} | "
        f"{_fmt(lungs['unet']['dice_both_min'])} | {_fmt(lungs['unet']['dice_both_median'])} | "
        f"{_fmt(lungs['unet']['dice_left_mean'])} | {_fmt(lungs['unet']['dice_right_mean'])} |",
        f"| morphological (no weights) | {_fmt(lungs['morphological']['dice_both_mean'])} | "
        f"{_fmt(lungs['morphological']['dice_both_min'])} | "
        f"{_fmt(lungs['morphological']['dice_both_median'])} | | |",
        "",
        "The ground truth includes lesions and excludes the trachea and main bronchi.",
        "",
        *_resolution_lines(lungs.get("unet_resolution")),
        "![lung Dice](lung_dice.png)",
        "",
        "## Lesion localization (COVID-like phantoms only)",
        "",
        "`CamLesionLocalizer` seeds lesions from the DeCoVNet CAM intersected with the 3DCC "
        "candidates; where the CAM is empty it falls back to weight-free intensity candidates "
        "inside the lungs, and each lesion records which (`method` in the job summary). "
        + _cam_share_text(loc),
        "",
        "Hit (DeCoVNet's definition): the middle element of `np.where(prediction)` lies inside a "
        "true lesion; an empty prediction is a miss. *Largest* uses the largest predicted "
        "lesion (the paper outputs one region per patient); *all* uses the union of every "
        "predicted lesion.",
        "",
        "| COVID phantoms | hit rate (largest) | hit rate (all) | lesion Dice mean | median |",
        "|---|---|---|---|---|",
        f"| {loc['n_covid']} | {_fmt(loc['hit_rate_largest'])} | {_fmt(loc['hit_rate_union'])} | "
        f"{_fmt(loc['lesion_dice_mean'])} | {_fmt(loc['lesion_dice_median'])} |",
        "",
    ]
    if ex_ph:
        lines += [f"![phantom examples]({ex_ph})", ""]
    lines += [
        "## Real studies (COVID-CT-MD, labels: slice-level infection flags)",
        "",
    ]
    real = results.get("real", [])
    if real:
        lines += [
            "| case | diagnosis | p(COVID-19) | predicted | U-Net vs morphological lungs Dice | "
            "lesions | share of lesion voxels on infected slices | largest lesion on an "
            "infected slice | share of lung slices labelled infected |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in real:
            lines.append(
                f"| {r['case']} | {r['diagnosis']} | {_fmt(r['p_covid'])} | "
                f"{r['predicted_label']} | {_fmt(r['dice_unet_vs_morph'])} | {r['n_lesions']} | "
                f"{_fmt(r['lesion_voxel_share_on_infected_slices'])} | "
                f"{_fmt(r['largest_lesion_point_on_infected_slice'])} | "
                f"{_fmt(r['lung_slice_share_infected'])} |")
        lines += [
            "",
            "The last column is the chance level of the previous two: a prediction placed at "
            "random on lung slices lands on an infected slice that often. The U-Net saw slices "
            "of cap002 (with morphological labels) in training, so its agreement on cap002 is "
            "not held-out; P002 is.",
            "",
            *_real_misclassified_lines(real),
        ]
        if ex_real:
            lines += [f"![real examples]({ex_real})", ""]
    else:
        lines += ["Not evaluated (run without `--no-real`).", ""]
    lines += [
        f"## Run time per case (CPU, {results.get('threads', 1)} torch thread(s))",
        "",
        f"morphological lungs {_fmt(t['time_morph_s'], 2)} s, U-Net lungs "
        f"{_fmt(t['time_unet_s'], 2)} s, DeCoVNet + CAM {_fmt(t['time_classify_s'], 2)} s, "
        f"localization {_fmt(t['time_localize_s'], 2)} s (phantoms are 256 x 256 in-plane).",
        "",
        "## Training",
        "",
    ]
    for name, d in info.items():
        cfg = ", ".join(f"{k} {v}" for k, v in d["config"].items())
        lines.append(f"- **{name}**: {d['steps']} steps in {d['minutes']:.1f} min ({cfg}).")
    if "classification_cnn_bert" not in results:
        lines.append("- **3D-CNN-BERT**: not trained in this session (CPU time); no weights are "
                     "shipped for it.")
    for note in notes or []:
        lines += ["", note]
    lines += ["", "![training loss](training_loss.png)", "",
              "## Per-phantom results", "",
              "| seed | kind | U-Net Dice | morph. Dice | p(COVID) | lesions | hit (largest) | "
              "lesion Dice |", "|---|---|---|---|---|---|---|---|"]
    for r in results["phantoms"]:
        lines.append(
            f"| {r['seed']} | {r['kind']} | {_fmt(r['dice_unet_both'])} | "
            f"{_fmt(r['dice_morph_both'])} | {_fmt(r['p_covid'])} | {r['n_lesions']} | "
            f"{_fmt(r.get('hit_largest'))} | {_fmt(r.get('lesion_dice'))} |")
    lines += ["", "## Reproduce", "",
              "The settings of every run are in the training section above (and in each "
              "checkpoint); the training notes give the exact commands. In outline:", "", "```",
              "python -m training make-data --train 240 --test 50",
              "python -m training train-unet ... && python -m training export --model unet",
              "python -m training train-decovnet ... && python -m training export "
              "--model decovnet --run-name RUN",
              "python -m training train-cnn-bert ... && python -m training export "
              "--model cnn-bert",
              "python -m training evaluate --cases 50   # then export again: cards get the "
              "figures",
              "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    logger.info("wrote %s", path)
    return path
