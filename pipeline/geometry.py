"""Patient-coordinate (LPS) geometry of axial image stacks.

DICOM patient coordinates are LPS: +x towards the patient's LEFT, +y towards POSTERIOR,
+z towards HEAD (PS3.3 §C.7.6.2.1.1). ImageOrientationPatient gives the row direction (the
direction of increasing column index) and the column direction (increasing row index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# Allowed deviation of |row|, |column| from 1 and of their dot product from 0.
ORTHONORMAL_TOLERANCE = 1e-3


def orientation_axes(
    image_orientation: Sequence[float],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return unit (row, column, normal) vectors of ImageOrientationPatient.

    Raises ValueError when the six values are not two orthonormal direction cosines.
    """
    values = np.asarray([float(v) for v in image_orientation], dtype=np.float64)
    if values.shape != (6,):
        raise ValueError(f"ImageOrientationPatient needs 6 values, got {values.size}")
    row, col = values[:3], values[3:]
    if (
        abs(np.linalg.norm(row) - 1.0) > ORTHONORMAL_TOLERANCE
        or abs(np.linalg.norm(col) - 1.0) > ORTHONORMAL_TOLERANCE
        or abs(float(row @ col)) > ORTHONORMAL_TOLERANCE
    ):
        raise ValueError(f"ImageOrientationPatient {values.tolist()} is not orthonormal")
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def direction_matrix(image_orientation: Sequence[float]) -> npt.NDArray[np.float64]:
    """3x3 matrix whose columns are the row, column and normal unit vectors (x, y, z axes)."""
    row, col, normal = orientation_axes(image_orientation)
    return np.stack([row, col, normal], axis=1)


def orientation_of(direction: npt.NDArray[np.float64]) -> list[float]:
    """ImageOrientationPatient (six values) of a direction matrix built by direction_matrix."""
    return [float(v) for v in (*direction[:, 0], *direction[:, 1])]
