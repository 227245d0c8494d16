"""Outline of a 2D mask as a closed polygon in DICOM image coordinates (for SR SCOORDs).

A lesion is drawn in a viewer as the outline of its mask on one axial slice. The outline is the
marching-squares iso-line at 0.5 between inside and outside pixel centres (on straight edges it
runs along the pixel edges, at corners it cuts them diagonally), simplified with the
Douglas-Peucker algorithm so that it stays within a quarter pixel of the traced line.

Coordinates follow DICOM PS3.3 C.18.6.1.2 (and highdicom's image coordinates): (column, row)
pairs in pixel units whose origin (0.0, 0.0) is the top left corner of the top left pixel, so the
centre of the pixel at array index (row r, column c) is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from skimage.measure import approximate_polygon, find_contours

logger = logging.getLogger(__name__)

PIXEL_CENTRE_OFFSET_PX = 0.5  # DICOM image coordinates of the centre of pixel index 0
ISO_LEVEL = 0.5  # between outside (0) and inside (1) pixel centres
# Douglas-Peucker tolerance: below the 0.35 px (half a diagonal of half a pixel) by which the
# traced line clears the centre of a corner pixel, so the simplified outline still encloses the
# centre of every pixel of the region (a viewer recomputing statistics counts those).
SIMPLIFY_TOLERANCE_PX = 0.25
SIMPLIFY_TOLERANCE_GROWTH = 1.5  # factor applied while an outline has too many points
OUTLINE_MAX_POINTS = 128  # vertices of one outline (the closing point included)
MIN_POLYGON_VERTICES = 3  # distinct vertices of the smallest polygon


def polygon_area_px(points: npt.NDArray[np.float64]) -> float:
    """Area enclosed by a closed polygon of (x, y) points (shoelace formula), in pixels."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def outline(
    mask: npt.NDArray[np.bool_], max_points: int = OUTLINE_MAX_POINTS
) -> npt.NDArray[np.float64]:
    """The outline of the largest region of a 2D ``mask`` as a closed polyline.

    Returns an (N, 2) float array of (column, row) DICOM image coordinates whose last point
    repeats the first (a closed POLYLINE, PS3.3 C.18.6.1.2), with at most ``max_points``
    points. The region is the traced contour enclosing the largest area (diagonal neighbours
    count as connected); holes are not drawn. Raises ValueError for an empty mask.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    if max_points < MIN_POLYGON_VERTICES + 1:
        raise ValueError(f"max_points must be at least {MIN_POLYGON_VERTICES + 1}")
    if not mask.any():
        raise ValueError("the mask is empty")
    # A zero border closes every contour, also where the region touches the image edge.
    padded = np.pad(mask.astype(np.float64), 1)
    contours = find_contours(padded, ISO_LEVEL, fully_connected="high")
    rows_cols = max(contours, key=lambda c: (polygon_area_px(c), len(c)))
    # (row, column) in the padded array -> (column, row) image coordinates of the original.
    traced = rows_cols[:, ::-1] - 1.0 + PIXEL_CENTRE_OFFSET_PX
    simplified = _simplify(traced, max_points)
    if not np.array_equal(simplified[0], simplified[-1]):
        simplified = np.vstack([simplified, simplified[:1]])
    return simplified


def _simplify(points: npt.NDArray[np.float64], max_points: int) -> npt.NDArray[np.float64]:
    """Douglas-Peucker with a tolerance that grows until at most ``max_points`` remain; the
    traced line itself when simplification would collapse a tiny region."""
    tolerance = SIMPLIFY_TOLERANCE_PX
    simplified = approximate_polygon(points, tolerance)
    while len(simplified) > max_points:
        tolerance *= SIMPLIFY_TOLERANCE_GROWTH
        simplified = approximate_polygon(points, tolerance)
    if len(np.unique(simplified, axis=0)) < MIN_POLYGON_VERTICES or polygon_area_px(
        simplified
    ) <= 0.0:
        if len(points) > max_points:
            raise ValueError("outline cannot be simplified to the requested number of points")
        logger.debug("outline of %d points kept unsimplified", len(points))
        return points
    return simplified
