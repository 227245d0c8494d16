"""Keep a learned lung mask off the airways, the oesophagus and the gut.

A U-Net trained on phantoms takes in whatever dark, round structure it sees: the trachea and
main bronchi above the hila, air in the oesophagus, the gastric fundus and bowel gas under the
diaphragm. The morphological segmenter (``lung_morphology``) tells those apart by topology: the
lungs are the largest internal air components with the tracked airway cut out, everything else
inside the body is other air. Run coarsely (about 2 mm pixels), it costs a fraction of the
U-Net and gives two rules for the learned mask:

1. voxels of the other air, grown by one coarse pixel (their wall), are not lung;
2. a 2-D piece of the learned mask that touches no morphological lung on its slice (a soft
   tissue blob above the apex, a loop of colon) is not lung either.

Consolidation that the morphological lungs miss stays: it is neither other air nor a piece
cut off from the lungs on its slice.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.stages.lung_morphology import (
    BODY_HU_MIN,
    block_any,
    lung_and_other_air,
    working_factor,
)
from pipeline.types import CTVolume

logger = logging.getLogger(__name__)

CLEANUP_PIXEL_MM = 2.0  # working pixel size of the topology check
OTHER_AIR_WALL_PX = 1  # coarse pixels of wall removed around non-lung air
LUNG_CONTACT_PX = 1  # a learned piece within this many coarse pixels of a lung is kept

_SLICE_SQUARE = np.zeros((3, 3, 3), dtype=bool)
_SLICE_SQUARE[1] = True


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
    if other.any():
        drop |= ndimage.binary_dilation(other, _SLICE_SQUARE, iterations=OTHER_AIR_WALL_PX)
    near_lung = ndimage.binary_dilation(lungs, _SLICE_SQUARE, iterations=LUNG_CONTACT_PX)
    pieces, count = ndimage.label(coarse_learned & ~drop, structure=_SLICE_SQUARE)
    if count:
        touching = np.zeros(count + 1, dtype=bool)
        touching[np.unique(pieces[near_lung])] = True
        touching[0] = True
        drop |= ~touching[pieces]
    drop &= coarse_learned
    shape = volume.shape
    full = np.repeat(np.repeat(drop, factor, axis=1), factor, axis=2)[:, : shape[1], : shape[2]]
    full &= learned
    logger.info(
        "lung cleanup: %.1f mL of airway, oesophagus or gut removed from the lungs in %.2f s",
        full.sum() * volume.voxel_volume_ml, time.perf_counter() - started,
    )
    return full
