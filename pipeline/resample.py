"""Separable resampling along any axis (nearest, linear, Keys cubic) in plain numpy.

Linear and cubic sampling along an axis is a product with the (n_out x n) interpolation
matrix, which BLAS runs fast on every core. Arrays are (z, y, x) like ``CTVolume.hu``.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

logger = logging.getLogger(__name__)

CUBIC_A = -0.5  # Keys cubic convolution parameter (Catmull-Rom)

FloatArray = npt.NDArray[np.float32]


def use_one_blas_thread() -> None:
    """Run numpy's BLAS (these products) on one thread for the rest of the process.

    The products here take tens of milliseconds; on a small machine a second BLAS thread
    spin-waits against torch's OpenMP threads and the rest of the host, and the same
    resampling took several times longer with two BLAS threads than with one (measured on
    2 vCPUs, 300-slice CT). Torch's own thread count is not touched.
    """
    ThreadpoolController().limit(limits=1, user_api="blas")  # kept: never restored
    logger.debug("numpy's BLAS limited to one thread")


def sample_axis(arr: npt.NDArray, axis: int, coords: npt.ArrayLike, order: int = 1) -> npt.NDArray:
    """Sample ``arr`` along one axis at fractional source indices ``coords`` (edge-clamped).

    order 0: nearest (any dtype kept); 1: linear; 3: Keys cubic convolution (float32 out).
    Linear and cubic sampling multiply by the (n_out x n) interpolation matrix (BLAS): several
    times less CPU than gathering the taps with ``np.take``, same values up to float32
    rounding.
    """
    a = np.asarray(arr)
    axis = axis % a.ndim
    n = a.shape[axis]
    c = np.clip(np.asarray(coords, dtype=np.float64), 0.0, n - 1)
    if order == 0 or n == 1:
        return np.take(a, np.rint(c).astype(np.intp), axis=axis)
    if order not in (1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    src = a if a.dtype == np.float32 else a.astype(np.float32)
    return _sample_by_matrix(src, axis, interpolation_matrix(n, c, order))


def _taps(
    n: int, c: npt.NDArray[np.float64], order: int
) -> list[tuple[npt.NDArray[np.intp], FloatArray]]:
    """(source index, weight) per tap of linear (2 taps) or Keys cubic (4 taps) sampling."""
    if order == 1:
        i0 = np.minimum(np.floor(c).astype(np.intp), n - 2)
        t = (c - i0).astype(np.float32)
        return [(i0, np.float32(1.0) - t), (i0 + 1, t)]
    base = np.floor(c).astype(np.intp)
    t = (c - base).astype(np.float32)
    a_ = np.float32(CUBIC_A)
    taps = []
    for k in (-1, 0, 1, 2):
        d = np.abs(t - np.float32(k))
        w = np.where(
            d <= 1,
            ((a_ + 2) * d - (a_ + 3)) * d * d + 1,
            np.where(d < 2, ((a_ * d - 5 * a_) * d + 8 * a_) * d - 4 * a_, 0),
        ).astype(np.float32)
        taps.append((np.clip(base + k, 0, n - 1), w))
    return taps


def interpolation_matrix(n: int, coords: npt.ArrayLike, order: int) -> FloatArray:
    """The (len(coords) x n) float32 matrix that samples a length-``n`` signal at ``coords``
    (edge-clamped; order 1 linear, 3 Keys cubic): row i holds the weights of output i."""
    c = np.clip(np.asarray(coords, dtype=np.float64), 0.0, n - 1)
    matrix = np.zeros((c.size, n), dtype=np.float32)
    rows = np.arange(c.size)
    for index, weight in _taps(n, c, order):
        np.add.at(matrix, (rows, index), weight)  # clamped taps at the edges add up
    return matrix


def _sample_by_matrix(src: FloatArray, axis: int, matrix: FloatArray) -> FloatArray:
    """Apply ``matrix`` along ``axis`` of ``src`` as matrix products (BLAS)."""
    shape = list(src.shape)
    n = shape[axis]
    shape[axis] = matrix.shape[0]
    before = int(np.prod(shape[:axis], dtype=np.int64))
    after = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    if after == 1:  # the last axis
        out = src.reshape(before, n) @ matrix.T
    elif before == 1:  # the first axis
        out = matrix @ src.reshape(n, after)
    else:  # a middle axis: one product per leading index
        out = np.matmul(matrix, src.reshape(before, n, after))
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


def align_corner_coords(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """Source coordinates of an ``n_out`` grid whose first and last samples hit the input's."""
    if n_out == 1 or n_in == 1:
        return np.zeros(n_out)
    return np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))


def half_pixel_coords(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """Source coordinates of pixel centres when ``n_out`` pixels span the same extent (cv2)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def resize(
    arr: npt.NDArray,
    shape: tuple[int, ...],
    order: int = 1,
    align_corners: bool = True,
) -> npt.NDArray:
    """Resize the last ``len(shape)`` axes separably (align_corners like ``scipy.ndimage.zoom``)."""
    a = np.asarray(arr)
    if len(shape) > a.ndim or min(shape) < 1:
        raise ValueError(f"cannot resize an array of shape {a.shape} to {shape}")
    first = a.ndim - len(shape)
    # Shrinking axes first keeps the intermediate arrays small.
    axes = sorted(range(len(shape)), key=lambda i: shape[i] / a.shape[first + i])
    out = a
    for i in axes:
        n_in, n_out = a.shape[first + i], shape[i]
        if n_in == n_out:
            continue
        coords = (
            align_corner_coords(n_in, n_out) if align_corners else half_pixel_coords(n_in, n_out)
        )
        out = sample_axis(out, first + i, coords, order)
    return out
