"""Keep a learned lung mask off the airways, the oesophagus and the gut.

A U-Net trained on phantoms takes in whatever dark, round structure it sees: the trachea and
main bronchi above the hila, air in the oesophagus, the gastric fundus and bowel gas under the
diaphragm. The morphological segmenter (``lung_morphology``) tells those apart by topology: the
lungs are the largest internal air components with the tracked airway cut out, everything else
inside the body is other air. Run coarsely (about 2 mm pixels), it costs a fraction of the
U-Net and gives two rules for the learned mask:

1. voxels of the other air (3-D components of 1 mL or more: the airway, gastric and bowel gas,
   not the air bronchograms of a consolidation), grown by one coarse pixel (their wall), are
   not lung;
2. a 2-D piece of the learned mask that touches no morphological lung on its slice or the
   next ones (a soft tissue blob above the apex, a loop of colon) is not lung either.

Consolidation that the morphological lungs miss stays: it is neither other air nor a piece
cut off from the lungs on its slice.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.preprocessing import bounding_box
from pipeline.stages.lung_morphology import (
    BODY_HU_MIN,
    block_any,
    lung_and_other_air,
    working_factor,
)
from pipeline.types import CTVolume

logger = logging.getLogger(__name__)

CLEANUP_PIXEL_MM = 2.0  # working pixel size of the topology check
LUNG_CONTACT_PX = 1  # a learned piece within one coarse pixel or slice of a lung is kept
OTHER_AIR_WALL_PX = 1  # coarse pixels of wall removed around that air
OTHER_AIR_MIN_ML = 1.0  # smaller pockets of other air (air bronchograms) are left alone

_SLICE_SQUARE = np.zeros((3, 3, 3), dtype=bool)
_SLICE_SQUARE[1] = True
_NEIGHBOURS_3D = np.ones((3, 3, 3), dtype=bool)


def _large_components(
    mask: npt.NDArray[np.bool_], voxel_ml: float
) -> npt.NDArray[np.bool_]:
    """3-D components of at least ``OTHER_AIR_MIN_ML``: airway, gastric and bowel gas, not the
    air bronchograms inside a consolidation (small pockets the lungs' topology leaves out)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes * voxel_ml >= OTHER_AIR_MIN_ML
    keep[0] = False
    return np.asarray(keep[labels])


def _to_full_grid(
    drop: npt.NDArray[np.bool_], factor: int, learned: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Coarse ``drop`` repeated onto the full grid within its bounding box, and with
    ``learned``."""
    full = np.zeros(learned.shape, dtype=bool)
    box = bounding_box(drop)
    if box is None:
        return full
    zs = slice(box.z0, box.z1)
    ys = slice(box.y0 * factor, min(box.y1 * factor, learned.shape[1]))
    xs = slice(box.x0 * factor, min(box.x1 * factor, learned.shape[2]))
    part = np.repeat(np.repeat(drop[box.slices], factor, axis=1), factor, axis=2)
    full[zs, ys, xs] = part[:, : ys.stop - ys.start, : xs.stop - xs.start] & learned[zs, ys, xs]
    return full


def non_lung_mask(
    volume: CTVolume, learned: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Full-grid voxels of ``learned`` (a lung mask) that are airway, oesophagus or gut."""
    started = time.perf_counter()
    factor = working_factor(volume.spacing_mm, CLEANUP_PIXEL_MM)
    body = block_any(volume.hu > BODY_HU_MIN, factor)
    lungs, other = lung_and_other_air(volume, factor, body)
    coarse_learned = block_any(learned, factor)
    drop = np.zeros(body.shape, dtype=bool)
    other = _large_components(other, volume.voxel_volume_ml * factor * factor)
    if other.any():  # with one coarse pixel of wall: the lungs may touch it, not overlap it
        drop |= ndimage.binary_dilation(other, _SLICE_SQUARE, iterations=OTHER_AIR_WALL_PX)
    near_lung = ndimage.binary_dilation(lungs, _NEIGHBOURS_3D, iterations=LUNG_CONTACT_PX)
    pieces, count = ndimage.label(coarse_learned & ~drop, structure=_SLICE_SQUARE)
    if count:
        touching = np.zeros(count + 1, dtype=bool)
        touching[np.unique(pieces[near_lung])] = True
        touching[0] = True
        drop |= ~touching[pieces]
    drop &= coarse_learned
    full = _to_full_grid(drop, factor, learned)
    logger.info(
        "lung cleanup: %.1f mL of airway, oesophagus or gut removed from the lungs in %.2f s",
        full.sum() * volume.voxel_volume_ml, time.perf_counter() - started,
    )
    return full
