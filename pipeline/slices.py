"""Slice selection, resampling to 32 slices and the RML input of 3D-CNN-BERT (models.md §2.2, §2.4).

The lung fraction of each axial slice picks a contiguous slice range with an adaptive threshold;
the range of N slices is resampled to sets of 32 indices (symmetric at evaluation, random in
training, several sets per scan for the MLP stage); each set becomes a 3 x 32 x 224 x 224 tensor
of [raw, lung mask, masked lung] channels with the Kinetics normalisation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.preprocessing import (
    UINT8_MAX,
    WINDOW_HU_MAX,
    WINDOW_HU_MIN,
    half_pixel_coords,
    sample_axis,
    window_uint8,
)

SET_SLICES = 32
SELECTION_THRESHOLDS = (0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)  # fractions of the maximum lung fraction
MIN_SPAN_TRAIN = 8  # train/val: last - first selected index >= 8
MIN_SPAN_TEST = 0  # test: any two selected slices
RML_RESIZE_PX = 280  # slices are resized to 224 * 1.25, then centre-cropped
RML_CROP_PX = 224
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def lung_fraction_per_slice(lung_mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Share of each axial slice's pixels inside the lung mask."""
    m = np.asarray(lung_mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {m.shape}")
    return m.sum(axis=(1, 2)) / float(m.shape[1] * m.shape[2])


def select_slice_range(fractions: npt.ArrayLike, min_span: int = MIN_SPAN_TEST) -> tuple[int, int]:
    """The contiguous slice range [first, last + 1) chosen by the adaptive threshold.

    For thresholds 0.7, 0.6, ... 0.1 of the largest lung fraction, take the slices at or above
    it; stop at the first threshold giving at least two slices spanning ``min_span`` or more
    (8 for training/validation, 0 at test). If none does, the 0.1 selection is used; a volume
    without lung keeps all its slices.
    """
    r = np.asarray(fractions, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError("fractions must be a non-empty 1D sequence")
    r_max = float(r.max())
    if r_max <= 0:
        return 0, int(r.size)
    selected = np.flatnonzero(r >= SELECTION_THRESHOLDS[-1] * r_max)
    for thresh in SELECTION_THRESHOLDS:
        idx = np.flatnonzero(r >= thresh * r_max)
        if idx.size >= 2 and idx[-1] - idx[0] >= min_span:
            selected = idx
            break
    return int(selected[0]), int(selected[-1]) + 1


def _symmetric_walk(centre: int, step: int, count: int) -> list[int]:
    """centre, centre+step, centre-step, centre+2*step, ... (``count`` items)."""
    out = [centre]
    k = 1
    while len(out) < count:
        out.append(centre + k * step)
        if len(out) < count:
            out.append(centre - k * step)
        k += 1
    return out


def _centre(n: int) -> int:
    return n // 2 if n % 2 else n // 2 - 1


def symmetric_resample(n: int, target: int = SET_SLICES, offset: int = 0) -> list[int]:
    """Evaluation resampler: ``target`` sorted indices into ``n`` slices, symmetric about centre.

    Down-sampling (n >= target): step n // target from the centre (n // 2, or n // 2 - 1 for even
    n, plus ``offset``) alternately up and down. Up-sampling: every slice repeated
    (target - n) // n extra times, then the remaining copies taken symmetrically about the centre.
    """
    if n < 1 or target < 1:
        raise ValueError(f"need n >= 1 and target >= 1, got n={n}, target={target}")
    if n >= target:
        step = n // target
        picks = _symmetric_walk(_centre(n) + offset, step, target)
        return sorted(min(max(i, 0), n - 1) for i in picks)
    repeats = 1 + (target - n) // n
    indices = [i for i in range(n) for _ in range(repeats)]
    extra = target - len(indices)
    indices += (
        [min(max(i, 0), n - 1) for i in _symmetric_walk(_centre(n), 1, extra)] if extra else []
    )
    return sorted(indices)


def random_resample(n: int, rng: np.random.Generator, target: int = SET_SLICES) -> list[int]:
    """Training resampler: duplicate random slices (n < target) or drop random ones (n > target)."""
    if n < 1 or target < 1:
        raise ValueError(f"need n >= 1 and target >= 1, got n={n}, target={target}")
    indices = list(range(n))
    while len(indices) < target:
        indices.append(int(rng.integers(n)))
    while len(indices) > target:
        indices.pop(int(rng.integers(len(indices))))
    return sorted(indices)


def sequential_sets(n: int, target: int = SET_SLICES) -> list[list[int]]:
    """All evaluation sets of a range of ``n`` slices (the MLP stage's sequential resampler).

    n < target: one up-sampled set. Otherwise n // target symmetric sets with offsets
    i - n // target + 1, plus, when n > target, the contiguous central ``target`` slices.
    """
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    if n < target:
        return [symmetric_resample(n, target)]
    k = n // target
    sets = [symmetric_resample(n, target, offset=i - k + 1) for i in range(k)]
    if n > target:
        start = (n - target) // 2
        sets.append(list(range(start, start + target)))
    return sets


def rml_slices(
    hu_slices: npt.NDArray[np.floating],
    mask_slices: npt.NDArray[np.bool_],
    window_hu: tuple[float, float] = (WINDOW_HU_MIN, WINDOW_HU_MAX),
    resize_px: int = RML_RESIZE_PX,
    crop_px: int = RML_CROP_PX,
) -> npt.NDArray[np.float32]:
    """Normalised RML channels of each slice: 3 x n x crop x crop float32.

    R = windowed slice (0..255), M = lung mask x 255, L = R inside the mask; resized (linear,
    pixel-centre aligned) to ``resize_px``, centre-cropped to ``crop_px``, / 255 and normalised
    with the Kinetics mean and std.
    """
    hu = np.asarray(hu_slices)
    mask = np.asarray(mask_slices, dtype=bool)
    if hu.shape != mask.shape or hu.ndim != 3:
        raise ValueError(f"slices {hu.shape} and masks {mask.shape} must be equal 3D shapes")
    raw = window_uint8(hu, *window_hu).astype(np.float32)
    channels = np.stack([raw, mask.astype(np.float32) * UINT8_MAX, raw * mask])  # 3 x n x H x W
    out = sample_axis(channels, 2, half_pixel_coords(hu.shape[1], resize_px), order=1)
    out = sample_axis(out, 3, half_pixel_coords(hu.shape[2], resize_px), order=1)
    lo = (resize_px - crop_px) // 2
    out = out[:, :, lo : lo + crop_px, lo : lo + crop_px] / np.float32(UINT8_MAX)
    mean = np.asarray(KINETICS_MEAN, dtype=np.float32)[:, None, None, None]
    std = np.asarray(KINETICS_STD, dtype=np.float32)[:, None, None, None]
    return np.ascontiguousarray((out - mean) / std, dtype=np.float32)


def rml_set(rml: npt.NDArray[np.float32], indices: list[int]) -> npt.NDArray[np.float32]:
    """Gather one set (3 x len(indices) x H x W) from ``rml_slices`` output of the slice range."""
    return np.ascontiguousarray(rml[:, np.asarray(indices, dtype=np.intp)])
