"""Evaluation metrics: Dice, ROC AUC, thresholded classification scores, DeCoVNet's lesion hit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice overlap; 1.0 when both masks are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(np.logical_and(a, b))) / total


def median_voxel(mask: npt.NDArray[np.bool_]) -> tuple[int, ...] | None:
    """The middle element of ``np.where(mask)`` (raster order), DeCoVNet's representative point.

    This is not a centroid: for a C-shaped region it can lie outside the region's hull centre,
    but it is always a voxel of the mask. None for an empty mask.
    """
    idx = np.nonzero(mask)
    n = idx[0].size
    if n == 0:
        return None
    k = n // 2
    return tuple(int(axis[k]) for axis in idx)


def lesion_hit(pred: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> bool:
    """DeCoVNet's hit: the prediction's median voxel lies inside any ground-truth lesion.

    An empty prediction is a miss.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    point = median_voxel(pred)
    return point is not None and bool(truth[point])


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("ROC AUC needs both positive and negative cases")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def roc_curve(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(false positive rates, true positive rates) over all thresholds, from (0, 0) to (1, 1)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = np.array([(s[y] >= t).mean() for t in thresholds])
    fpr = np.array([(s[~y] >= t).mean() for t in thresholds])
    return np.append(fpr, 1.0), np.append(tpr, 1.0)


@dataclass(frozen=True)
class BinaryScores:
    """Confusion-matrix scores at one threshold."""

    threshold: float
    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float
    tp: int
    fp: int
    tn: int
    fn: int


def binary_scores(labels: npt.ArrayLike, scores: npt.ArrayLike,
                  threshold: float = 0.5) -> BinaryScores:
    """Accuracy, sensitivity, specificity, precision and F1 with ``score >= threshold`` positive."""
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn = int((~pred & ~y).sum())
    fn = int((~pred & y).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return BinaryScores(threshold, (tp + tn) / max(1, y.size), sens, spec, prec, f1, tp, fp, tn,
                        fn)
