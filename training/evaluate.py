"""Evaluate the registered models with the real pipeline stages on held-out phantoms and real CT.

For each held-out phantom: morphological and U-Net lungs (Dice against ground truth), DeCoVNet
on the U-Net lungs (probability of COVID-19), and ``CamLesionLocalizer`` on its CAM (DeCoVNet's
hit: median voxel of the prediction inside a true lesion; lesion Dice). For the real COVID-CT-MD
studies: the predicted class, the agreement of U-Net and morphological lungs, and whether the
predicted lesions fall on the slices labelled as infected.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from pipeline.models.registry import read_registry
from pipeline.preprocessing import coarse_lung_box
from pipeline.series import volume_from_array
from pipeline.stages.classify import CNN_BERT_MODEL_NAME, CnnBertClassifier, DeCoVNetClassifier
from pipeline.stages.localize import CamLesionLocalizer
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from pipeline.stages.lung_unet import UNetLungSegmenter
from pipeline.types import CTVolume, Lesion, LungMask
from training.cache import case_file, load_case, split_seeds
from training.metrics import binary_scores, dice, lesion_hit, median_voxel, roc_auc, roc_curve

logger = logging.getLogger(__name__)

EXAMPLES_DIR = "examples"


def _union(lesions: tuple[Lesion, ...], shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    out = np.zeros(shape, dtype=bool)
    for lesion in lesions:
        out |= lesion.mask
    return out


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": float("nan"), "min": float("nan"), "median": float("nan")}
    return {"mean": float(arr.mean()), "min": float(arr.min()), "median": float(np.median(arr))}


RESOLUTION_CASES = 10  # held-out phantoms the U-Net is also run on at full resolution
UNET_DIVISOR = 16  # the U-Net's four poolings need sides divisible by 16


def _native_work_shape(volume: CTVolume) -> tuple[int, int] | None:
    """The lung box's own pixel size rounded up to the U-Net's divisor (None without a box)."""
    box = coarse_lung_box(volume.hu, volume.spacing_mm)
    if box is None:
        return None
    _, ny, nx = box.shape
    return (UNET_DIVISOR * math.ceil(ny / UNET_DIVISOR),
            UNET_DIVISOR * math.ceil(nx / UNET_DIVISOR))


def unet_resolution_row(
    unet: UNetLungSegmenter, volume: CTVolume, truth: npt.NDArray[np.bool_]
) -> dict[str, Any]:
    """Dice and time of the U-Net's fast path against running it on every slice, at the
    working shape and at the lung box's own pixel size (the "full resolution")."""
    row: dict[str, Any] = {}
    native = _native_work_shape(volume)
    runs: dict[str, Callable[[], LungMask]] = {
        "fast": lambda: unet.segment(volume),
        "every_slice": lambda: unet.segment_at(volume, 0.0, unet.work_shape_px),
    }
    if native is not None:
        runs["full_resolution"] = lambda: unet.segment_at(volume, 0.0, native)
    for name, run in runs.items():
        t0 = time.perf_counter()
        lungs = run()
        row[f"dice_{name}"] = dice(lungs.both, truth)
        row[f"time_{name}_s"] = time.perf_counter() - t0
    row["full_resolution_shape"] = list(native) if native else None
    return row


def _classification_summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """ROC AUC, the scores at p = 0.5, the ROC curve and mean p per kind of ``row[key]``."""
    labels = [r["label"] for r in rows]
    scores = [r[key] for r in rows]
    bs = binary_scores(labels, scores, 0.5)
    fpr, tpr = roc_curve(labels, scores)
    return {
        "n": len(rows), "n_covid": int(sum(labels)), "roc_auc": roc_auc(labels, scores),
        "accuracy": bs.accuracy, "sensitivity": bs.sensitivity, "specificity": bs.specificity,
        "precision": bs.precision, "f1": bs.f1, "tp": bs.tp, "fp": bs.fp, "tn": bs.tn,
        "fn": bs.fn, "roc_fpr": fpr.tolist(), "roc_tpr": tpr.tolist(),
        "mean_p_covid_by_kind": {k: float(np.mean([r[key] for r in rows if r["kind"] == k]))
                                 for k in sorted({r["kind"] for r in rows})},
    }


def evaluate_all(
    work_dir: Path, registry_dir: Path | None, n_cases: int, crop_px: tuple[int, int] | None,
    real: bool = True,
) -> dict[str, Any]:
    """Run every stage on ``n_cases`` test phantoms (and the real studies); returns the metrics.

    ``crop_px`` is unused when None (the classifier reads its crop shape from the registry).
    """
    del crop_px
    morph = MorphologicalLungSegmenter()
    unet = UNetLungSegmenter(device="cpu", registry_dir=registry_dir)
    classifier = DeCoVNetClassifier(device="cpu", registry_dir=registry_dir)
    cnn_bert = (CnnBertClassifier(device="cpu", registry_dir=registry_dir)
                if CNN_BERT_MODEL_NAME in read_registry(registry_dir) else None)
    localizer = CamLesionLocalizer()
    paths = [case_file(work_dir, "test", s) for s in split_seeds("test", n_cases * 3)]
    paths = [p for p in paths if p.exists()][:n_cases]
    if not paths:
        raise FileNotFoundError(f"no test phantoms under {work_dir}; run make-data")
    examples = work_dir / EXAMPLES_DIR
    examples.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for path in tqdm(paths, desc="evaluate phantoms", unit="case"):
        case = load_case(path)
        volume = volume_from_array(case.hu, case.spacing_mm, uid_root=f"phantom-{case.seed}")
        t0 = time.perf_counter()
        m_lungs = morph.segment(volume)
        t1 = time.perf_counter()
        u_lungs = unet.segment(volume)
        t2 = time.perf_counter()
        fallback = not u_lungs.both.any()  # an empty U-Net mask: classify on the morphology
        lungs = m_lungs if fallback else u_lungs
        cls = classifier.classify(volume, lungs)
        t3 = time.perf_counter()
        lesions = localizer.localize(volume, lungs, cls)
        t4 = time.perf_counter()
        row: dict[str, Any] = {
            "seed": case.seed, "kind": case.kind, "label": int(case.is_covid),
            "shape": list(case.hu.shape), "spacing_mm": list(case.spacing_mm),
            "dice_morph_both": dice(m_lungs.both, case.lungs),
            "dice_unet_both": dice(u_lungs.both, case.lungs),
            "dice_unet_left": dice(u_lungs.left, case.lung_left),
            "dice_unet_right": dice(u_lungs.right, case.lung_right),
            "p_covid": cls.p_covid, "n_lesions": len(lesions), "unet_empty_fallback": fallback,
            "time_morph_s": t1 - t0, "time_unet_s": t2 - t1, "time_classify_s": t3 - t2,
            "time_localize_s": t4 - t3,
        }
        if cnn_bert is not None:
            t5 = time.perf_counter()
            row["p_covid_cnn_bert"] = cnn_bert.classify(volume, lungs).p_covid
            row["time_cnn_bert_s"] = time.perf_counter() - t5
        if len(rows) < RESOLUTION_CASES:
            row["unet_resolution"] = unet_resolution_row(unet, volume, case.lungs)
        if case.is_covid:
            union = _union(lesions, volume.shape)
            largest = lesions[0].mask if lesions else np.zeros(volume.shape, dtype=bool)
            row.update({
                "lesion_method": lesions[0].method if lesions else "none",
                "hit_largest": lesion_hit(largest, case.lesion_mask),
                "hit_union": lesion_hit(union, case.lesion_mask),
                "lesion_dice": dice(union, case.lesion_mask),
            })
        rows.append(row)
        if len([r for r in rows if r["kind"] == case.kind]) == 1:
            _save_example(examples / f"phantom_{case.kind}.npz", case.hu, case.lungs,
                          case.lesion_mask, u_lungs.both, _union(lesions, volume.shape),
                          cls.activation)
    results: dict[str, Any] = {"phantoms": rows}
    results["classification"] = _classification_summary(rows, "p_covid")
    if cnn_bert is not None:
        results["classification_cnn_bert"] = _classification_summary(rows, "p_covid_cnn_bert")
    lung = {
        "unet": {f"dice_{s}_{k}": v for s in ("both", "left", "right")
                 for k, v in _summary([r[f"dice_unet_{s}"] for r in rows]).items()},
        "morphological": {f"dice_both_{k}": v for k, v in
                          _summary([r["dice_morph_both"] for r in rows]).items()},
    }
    res_rows = [r["unet_resolution"] for r in rows if "unet_resolution" in r]
    if res_rows:
        lung["unet_resolution"] = {
            "n": len(res_rows),
            **{f"{k}_mean": float(np.mean([r[k] for r in res_rows if k in r]))
               for k in ("dice_fast", "dice_every_slice", "dice_full_resolution",
                         "time_fast_s", "time_every_slice_s", "time_full_resolution_s")
               if any(k in r for r in res_rows)},
        }
    results["lungs"] = lung
    covid_rows = [r for r in rows if r["label"] == 1]
    results["localization"] = {
        "n_covid": len(covid_rows),
        # share of COVID cases whose lesions came from the CAM (the rest: intensity fallback)
        "cam_share": float(np.mean([r["lesion_method"] == "cam" for r in covid_rows])),
        "hit_rate_largest": float(np.mean([r["hit_largest"] for r in covid_rows])),
        "hit_rate_union": float(np.mean([r["hit_union"] for r in covid_rows])),
        "lesion_dice_mean": float(np.mean([r["lesion_dice"] for r in covid_rows])),
        "lesion_dice_median": float(np.median([r["lesion_dice"] for r in covid_rows])),
    }
    results["threads"] = torch.get_num_threads()
    results["timings_s"] = {k: _summary([r[k] for r in rows])["mean"] for k in
                            ("time_morph_s", "time_unet_s", "time_classify_s", "time_localize_s")}
    if real:
        results["real"] = evaluate_real(morph, unet, classifier, localizer, examples)
    return results


def evaluate_real(
    morph: MorphologicalLungSegmenter, unet: UNetLungSegmenter,
    classifier: DeCoVNetClassifier, localizer: CamLesionLocalizer, examples: Path,
) -> list[dict[str, Any]]:
    """Per real study: class, lung agreement, and where the predicted lesions lie."""
    from training.real_data import load_real_cases, slice_fraction_in

    out = []
    for case in load_real_cases():
        volume = case.volume
        m_lungs = morph.segment(volume)
        u_lungs = unet.segment(volume)
        agreement = dice(u_lungs.both, m_lungs.both)
        if not u_lungs.both.any():
            u_lungs = m_lungs
        cls = classifier.classify(volume, u_lungs)
        lesions = localizer.localize(volume, u_lungs, cls)
        infected = case.infected_volume_slices()
        union = _union(lesions, volume.shape)
        largest_point = median_voxel(lesions[0].mask) if lesions else None
        out.append({
            "case": case.name, "diagnosis": case.diagnosis, "covid_positive": case.covid_positive,
            "n_slices": volume.shape[0], "n_infected_slices": len(infected),
            "p_covid": cls.p_covid, "predicted_label": cls.label,
            "dice_unet_vs_morph": agreement,
            "n_lesions": len(lesions),
            "lesion_voxel_share_on_infected_slices": slice_fraction_in(union, infected),
            "largest_lesion_point_on_infected_slice": (
                None if largest_point is None else bool(largest_point[0] in infected)),
            "lesion_volumes_ml": [round(les.volume_ml, 2) for les in lesions[:10]],
            "lung_slice_share_infected": len(infected) / max(1, int(
                u_lungs.both.any(axis=(1, 2)).sum())),
        })
        _save_example(examples / f"real_{case.name}.npz", volume.hu, u_lungs.both,
                      np.zeros(volume.shape, dtype=bool), m_lungs.both, union, cls.activation,
                      infected=sorted(infected))
    return out


def _save_example(
    path: Path, hu: npt.NDArray[np.float32], lungs: npt.NDArray[np.bool_],
    truth: npt.NDArray[np.bool_], pred_lungs: npt.NDArray[np.bool_],
    pred_lesions: npt.NDArray[np.bool_], activation: npt.NDArray[np.float32] | None,
    infected: list[int] | None = None,
) -> None:
    """Keep three axial slices of a case for the report's figures (small npz)."""
    score = pred_lesions.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    if score.max() == 0:
        score = lungs.sum(axis=(1, 2))
    z_main = int(np.argmax(score))
    zs = sorted({max(0, z_main - 15), z_main, min(hu.shape[0] - 1, z_main + 15)})
    act = activation if activation is not None else np.zeros(hu.shape, dtype=np.float32)
    np.savez_compressed(
        path, z=np.asarray(zs), hu=hu[zs].astype(np.int16), lungs=lungs[zs],
        truth=truth[zs], pred_lungs=pred_lungs[zs], pred_lesions=pred_lesions[zs],
        activation=act[zs].astype(np.float16),
        infected=np.asarray(infected if infected is not None else [], dtype=np.int32),
    )
