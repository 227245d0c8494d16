"""Weight-free lung segmentation by thresholding and morphology (models.md §1.4, extended).

The papers' method: tissue is HU > -320; air connected to the outside is removed; per axial
slice everything that is not the largest tissue+outside component (vessels inside the lungs)
becomes lung; the largest 3-D air components are the lungs. Beyond the paper this stage
removes the trachea and main bronchi and separates the left from the right lung. It works at
a reduced in-plane resolution (about 1.2 mm pixels) and repeats the labels back to the full
grid, which keeps a 300-slice CT within a few seconds on one core.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.stages.lung_split import cut_at_column, separate_joined
from pipeline.types import CTVolume, LungMask, ModelInfo

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "morphological-lung"
ALGORITHM_VERSION = "1.0.0"

BODY_HU_MIN = -320.0  # voxels above this are body tissue (paper's threshold)
WORK_PIXEL_SPACING_MM = 1.2  # target in-plane spacing of the working grid
SECOND_LUNG_MIN_FRACTION = 0.2  # a second air component counts as a lung if >= this x largest
LUNG_MIN_VOLUME_ML = 20.0  # air components smaller than this are never lungs
TRACHEA_MIN_AREA_MM2 = 40.0  # smaller air specks are noise, not the trachea
TRACHEA_MAX_AREA_MM2 = 700.0  # cross-section of trachea or bronchus (diameter below ~30 mm)
TRACHEA_HU_MAX = -600.0  # mean HU of the trachea's lumen component (partial volume included)
TRACHEA_MAX_OFFSET_MM = 45.0  # distance of the trachea from the lungs' centre column
TRACHEA_SEARCH_DEPTH_MM = 80.0  # search the trachea this far below the top of the lungs
AIRWAY_MARGIN_MM = 2.0  # airway wall removed with the lumen
AIRWAY_NECK_MM = 2.5  # widest contact between airway and lung opened by erosion
SINGLE_LUNG_SIDE_FRACTION = 0.9  # an unsplittable region this much on one side is one lung

_SLICE_SQUARE = np.zeros((3, 3, 3), dtype=bool)  # 8-connectivity within each axial slice
_SLICE_SQUARE[1] = True
_SLICE_CROSS = np.array(  # 4-connectivity within each axial slice, none across slices
    [
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
    ],
    dtype=bool,
)


class MorphologicalLungSegmenter:
    """Lung segmentation without weights; satisfies the ``LungSegmenter`` protocol."""

    def __init__(self, work_pixel_spacing_mm: float = WORK_PIXEL_SPACING_MM) -> None:
        if work_pixel_spacing_mm <= 0:
            raise ValueError("work_pixel_spacing_mm must be positive")
        self._work_spacing_mm = work_pixel_spacing_mm

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(ALGORITHM_NAME, ALGORITHM_VERSION)

    def segment(self, volume: CTVolume) -> LungMask:
        started = time.perf_counter()
        factor = working_factor(volume.spacing_mm, self._work_spacing_mm)
        tissue = volume.hu > BODY_HU_MIN
        labels = segment_lung_labels(volume, factor, tissue)
        left, right = upsample_labels(labels, factor, tissue)
        logger.info(
            "morphological lungs: factor %d, left %.0f mL, right %.0f mL in %.2f s",
            factor, left.sum() * volume.voxel_volume_ml, right.sum() * volume.voxel_volume_ml,
            time.perf_counter() - started,
        )
        return LungMask(left=left, right=right, method=f"{ALGORITHM_NAME}@{ALGORITHM_VERSION}")


def working_factor(spacing_mm: tuple[float, float, float], target_mm: float) -> int:
    """Integer in-plane downsampling factor that brings pixels closest to ``target_mm``."""
    finest = min(spacing_mm[1], spacing_mm[2])
    return max(1, int(round(target_mm / finest)))


def block_any(mask: npt.NDArray[np.bool_], factor: int) -> npt.NDArray[np.bool_]:
    """True where any voxel of a ``factor`` x ``factor`` in-plane block is True.

    Pooling the tissue mask this way keeps thin walls (trachea, pleura) closed at the
    reduced resolution, where averaging HU would let air leak through them.
    """
    if factor == 1:
        return mask
    ny, nx = -(-mask.shape[1] // factor), -(-mask.shape[2] // factor)
    out = np.zeros((mask.shape[0], ny, nx), dtype=bool)
    for dy in range(factor):
        for dx in range(factor):
            part = mask[:, dy::factor, dx::factor]
            out[:, : part.shape[1], : part.shape[2]] |= part
    return out


def upsample_labels(
    labels: npt.NDArray[np.uint8], factor: int, tissue: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Working-grid labels (1 left, 2 right) back to the full grid as (left, right) masks.

    Labels are repeated to the full grid; full-resolution air voxels in the one-block band
    around each lung (lost by the tissue pooling of ``block_any``) join the nearest lung.
    """
    shape = tissue.shape
    if factor == 1:
        return labels == 1, labels == 2
    full = np.repeat(np.repeat(labels, factor, axis=1), factor, axis=2)[:, : shape[1], : shape[2]]
    band = np.zeros_like(labels)
    if labels.any():
        box = _padded_box(labels > 0, 1)
        band[box] = ndimage.grey_dilation(labels[box], footprint=_SLICE_SQUARE)
        band[labels > 0] = 0
    band_full = np.repeat(np.repeat(band, factor, axis=1), factor, axis=2)
    band_full = band_full[:, : shape[1], : shape[2]]
    border = (band_full > 0) & ~tissue
    full[border] = band_full[border]
    return full == 1, full == 2


def segment_lung_labels(
    volume: CTVolume, factor: int, tissue: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.uint8]:
    """Lung labels (0 none, 1 left, 2 right) on the in-plane grid reduced by ``factor``.

    ``tissue`` is ``volume.hu > BODY_HU_MIN`` when the caller already has it.
    """
    if tissue is None:
        tissue = volume.hu > BODY_HU_MIN
    body = block_any(tissue, factor)
    lungs, _ = lung_and_other_air(volume, factor, body)
    if not lungs.any():
        return np.zeros(body.shape, dtype=np.uint8)
    dz, dy, dx = volume.spacing_mm
    return _split_left_right(lungs, body, volume, factor, (dz, dy * factor, dx * factor))


def lung_and_other_air(
    volume: CTVolume, factor: int, body: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(lungs, other internal air) on the grid reduced by ``factor``; ``body`` is pooled tissue.

    The lungs are the largest internal air components less the tracked airway (trachea,
    main bronchi and their wall); the other air is every remaining internal air voxel:
    airway lumen, oesophagus, stomach and bowel gas.
    """
    dz, dy, dx = volume.spacing_mm
    spacing = (dz, dy * factor, dx * factor)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    candidates = _inner_air(body)
    lungs = _largest_air_components(candidates, voxel_ml)
    if not lungs.any():
        logger.warning("no lung-like air region found")
        return lungs, candidates
    airway = _airway(lungs, volume, factor, spacing)
    if airway is not None and airway.any():
        margin = max(1, int(round(AIRWAY_MARGIN_MM / min(spacing[1], spacing[2]))))
        box = _padded_box(airway, margin)
        lungs[box] &= ~ndimage.binary_dilation(
            airway[box], structure=_SLICE_CROSS, iterations=margin
        )
        lungs = _largest_air_components(lungs, voxel_ml)
    return lungs, candidates & ~lungs


def _padded_box(mask: npt.NDArray[np.bool_], margin: int) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, grown by ``margin`` in-plane and one slice in z."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    pads = (1, margin, margin)
    return tuple(
        slice(max(0, s.start - pad), min(size, s.stop + pad))
        for s, pad, size in zip(box, pads, mask.shape, strict=True)
    )


def _inner_air(body: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Per slice: air not connected to the image border and not a tissue island's hole.

    Air touching the slice border is outside the patient. Of the rest (tissue plus outside
    air), the largest 2-D component is the body; smaller tissue islands (vessels surrounded by
    lung) are counted as lung, which fills the vessel holes as the paper does.
    """
    air_labels, _ = ndimage.label(~body, structure=_SLICE_CROSS)
    border = np.zeros(int(air_labels.max()) + 1, dtype=bool)
    for edge in (air_labels[:, 0, :], air_labels[:, -1, :], air_labels[:, :, 0],
                 air_labels[:, :, -1]):
        border[np.unique(edge)] = True
    border[0] = False
    not_lung = body | border[air_labels]
    del air_labels
    labels, count = ndimage.label(not_lung, structure=_SLICE_CROSS)
    if count == 0:
        return ~not_lung
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    objects = ndimage.find_objects(labels)
    z_of_label = np.zeros(count + 1, dtype=np.int64)
    z_of_label[1:] = [obj[0].start if obj is not None else 0 for obj in objects]
    # The largest label per slice: sort labels by (slice, size) and take the last of each slice.
    order = np.lexsort((sizes[1:], z_of_label[1:])) + 1
    last_of_slice = np.r_[z_of_label[order][1:] != z_of_label[order][:-1], True]
    keep = np.zeros(count + 1, dtype=bool)
    keep[order[last_of_slice]] = True
    return ~keep[labels]


def _largest_air_components(
    candidates: npt.NDArray[np.bool_], voxel_ml: float
) -> npt.NDArray[np.bool_]:
    """Keep the largest 3-D component and a second one when it is lung-sized too."""
    labels, count = ndimage.label(candidates)
    if count == 0:
        return np.zeros_like(candidates)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = np.zeros(count + 1, dtype=bool)
    largest = sizes[order[0]]
    if largest * voxel_ml < LUNG_MIN_VOLUME_ML:
        return np.zeros_like(candidates)
    keep[order[0]] = True
    if count >= 2 and sizes[order[1]] >= SECOND_LUNG_MIN_FRACTION * largest:
        keep[order[1]] = True
    return keep[labels]


def _cranial_order(volume: CTVolume) -> int:
    """+1 when higher slice indices are more cranial (LPS +z is head), else -1."""
    return 1 if volume.direction[2, 2] >= 0 else -1


def _airway(
    lungs: npt.NDArray[np.bool_],
    volume: CTVolume,
    factor: int,
    spacing: tuple[float, float, float],
) -> npt.NDArray[np.bool_] | None:
    """Trachea and extra-pulmonary bronchi, tracked slice by slice from the top.

    Above the hila the airways are 2-D components of the air mask separate from the lungs
    (the mediastinum surrounds them). Starting from the trachea (``_trachea_seed``), each
    slice further down keeps the small components that overlap the airway of the slice
    above; tracking stops where a bronchus merges with the lung in 2-D. Measured trachea HU
    in low-dose scans is close to parenchyma (noise, partial volume), so shape and
    continuity decide here, not a darker-than-lung threshold.
    """
    found = _trachea_seed(lungs, volume, factor, spacing)
    if found is None:
        return None
    seed_z, seed = found
    pixel_mm2 = spacing[1] * spacing[2]
    max_pixels = TRACHEA_MAX_AREA_MM2 / pixel_mm2
    step = -_cranial_order(volume)  # towards the feet
    neck_pixels = max(1, int(round(AIRWAY_NECK_MM / min(spacing[1], spacing[2]))))
    airway = np.zeros(lungs.shape, dtype=bool)
    airway[seed_z] = seed
    previous = seed
    z = seed_z + step
    while 0 <= z < lungs.shape[0]:
        labels, _ = ndimage.label(lungs[z])
        touching = np.unique(labels[previous])
        touching = touching[touching > 0]
        if touching.size == 0:
            break
        sizes = np.bincount(labels.ravel())
        current = np.isin(labels, touching[sizes[touching] <= max_pixels])
        for label in touching[sizes[touching] > max_pixels]:
            current |= _airway_through_neck(labels == label, previous, max_pixels, neck_pixels)
        if not current.any():
            break
        airway[z] = current
        previous = current
        z += step
    logger.debug(
        "airway: %d slices, %.1f mL", int(airway.any(axis=(1, 2)).sum()),
        airway.sum() * pixel_mm2 * spacing[0] / 1000.0,
    )
    return airway


def _airway_through_neck(
    component: npt.NDArray[np.bool_],
    previous: npt.NDArray[np.bool_],
    max_pixels: float,
    neck_pixels: int,
) -> npt.NDArray[np.bool_]:
    """The airway part of a 2-D component where the airway touches the lung by a thin neck.

    At reduced resolution the tracheal wall can vanish where the trachea abuts a lung apex.
    Eroding the merged component opens such necks; the small piece under the previous slice's
    airway, dilated back inside the component, is the airway. Empty when nothing separates.
    """
    eroded = component
    for iteration in range(1, neck_pixels + 1):
        eroded = ndimage.binary_erosion(eroded)
        labels, _ = ndimage.label(eroded)
        under = np.unique(labels[previous & eroded])
        under = under[under > 0]
        if under.size == 0:
            continue
        sizes = np.bincount(labels.ravel())
        pieces = np.isin(labels, under[sizes[under] <= max_pixels])
        if pieces.any():
            return ndimage.binary_dilation(pieces, iterations=iteration, mask=component)
    return np.zeros_like(component)


def _trachea_seed(
    lungs: npt.NDArray[np.bool_],
    volume: CTVolume,
    factor: int,
    spacing: tuple[float, float, float],
) -> tuple[int, npt.NDArray[np.bool_]] | None:
    """The trachea in the most cranial slices: a small air component near the midline.

    The trachea reaches above the lung apices, so the top slices of the air mask show it
    alone or next to small apices; the component closest to the lungs' centre column wins.
    """
    occupied = np.flatnonzero(lungs.any(axis=(1, 2)))
    if occupied.size == 0:
        return None
    direction = _cranial_order(volume)
    top = int(occupied[-1] if direction > 0 else occupied[0])
    depth = int(math.ceil(TRACHEA_SEARCH_DEPTH_MM / spacing[0]))
    pixel_mm2 = spacing[1] * spacing[2]
    column_mm = spacing[2] * float(np.hypot(volume.direction[0, 0], volume.direction[1, 0]))
    column_counts = lungs.sum(axis=(0, 1))
    centre_col = float(np.average(np.arange(lungs.shape[2]), weights=column_counts))
    for offset in range(depth):
        z = top - direction * offset
        if not 0 <= z < lungs.shape[0]:
            break
        labels, count = ndimage.label(lungs[z])
        hu = volume.hu[z, ::factor, ::factor]  # same grid as the working mask
        best: tuple[float, int] | None = None
        for index, region in enumerate(ndimage.find_objects(labels), start=1):
            if region is None:
                continue
            component = labels[region] == index
            area_mm2 = float(component.sum()) * pixel_mm2
            if not TRACHEA_MIN_AREA_MM2 <= area_mm2 <= TRACHEA_MAX_AREA_MM2:
                continue
            if float(hu[region][component].mean()) > TRACHEA_HU_MAX:
                continue
            cols = np.nonzero(component)[1] + region[1].start
            distance_mm = abs(float(cols.mean()) - centre_col) * column_mm
            if distance_mm <= TRACHEA_MAX_OFFSET_MM and (best is None or distance_mm < best[0]):
                best = (distance_mm, index)
        if best is not None:
            logger.debug("trachea seed at slice %d, %.0f mm from the centre", z, best[0])
            return z, labels == best[1]
    logger.info("no trachea found in the top %.0f mm of the lungs", TRACHEA_SEARCH_DEPTH_MM)
    return None


def _split_left_right(
    lungs: npt.NDArray[np.bool_],
    body: npt.NDArray[np.bool_],
    volume: CTVolume,
    factor: int,
    spacing: tuple[float, float, float],
) -> npt.NDArray[np.uint8]:
    """Label the lungs 1 (patient left) and 2 (patient right).

    Two separate components are assigned by the LPS x of their centroids (+x is the patient's
    left). A single joined component is eroded in-plane until it falls apart into two large
    parts, which then grow back over the eroded shell (nearest-part assignment). Parts that
    all lie on one side of the body's centre are one lung of that side.
    """
    labels, count = ndimage.label(lungs)
    parts: list[npt.NDArray[np.bool_]]
    if count >= 2:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        first, second = np.argsort(sizes)[::-1][:2]
        parts = [labels == first, labels == second]
    else:
        separated = separate_joined(lungs, spacing)
        parts = separated if separated is not None else _split_at_midline(lungs, body)
    out = np.zeros(lungs.shape, dtype=np.uint8)
    reference = body.copy()
    reference[~lungs.any(axis=(1, 2))] = False
    midline_x = _centroid_lps_x(reference, volume, factor)
    present = [part for part in parts if part.any()]
    centroids_x = [_centroid_lps_x(part, volume, factor) for part in present]
    sides = {x > midline_x for x in centroids_x}
    if len(sides) == 1:
        # One lung only (or two pieces of one): its side is where it lies relative to the
        # body's centre.
        if len(present) > 1:
            logger.warning("both lung parts lie on one side of the body; kept as one lung")
        out[lungs] = 1 if sides.pop() else 2
        return out
    left_index = int(np.argmax(centroids_x))
    out[present[left_index]] = 1
    out[present[1 - left_index]] = 2
    return out


def _split_at_midline(
    lungs: npt.NDArray[np.bool_], body: npt.NDArray[np.bool_]
) -> list[npt.NDArray[np.bool_]]:
    """Fallback for a region erosion cannot split: one lung, or two cut at the body midline.

    When nearly all of the region lies on one side of the body's centre column it is a
    single lung (the other one absent or collapsed) and stays whole.
    """
    slices = lungs.any(axis=(1, 2))
    first, second = cut_at_column(lungs, body[slices].sum(axis=(0, 1)).astype(np.float64))
    total = int(lungs.sum())
    if max(int(first.sum()), int(second.sum())) >= SINGLE_LUNG_SIDE_FRACTION * total:
        logger.warning("only one lung found; it is not split")
        return [lungs, np.zeros_like(lungs)]
    logger.warning("lungs are joined and could not be separated; split at the body midline")
    return [first, second]


def _centroid_lps_x(part: npt.NDArray[np.bool_], volume: CTVolume, factor: int) -> float:
    """LPS x (mm) of a working-grid mask's centroid, from every second voxel (plenty here)."""
    sample = part[::2, ::2, ::2]
    if not sample.any():
        sample, step = part, 1
    else:
        step = 2
    if not sample.any():
        return 0.0
    z, y, x = (float(c) * step for c in ndimage.center_of_mass(sample))
    # Working-grid index -> full-grid index: block centre of factor x factor pixels.
    full = [z, y * factor + (factor - 1) / 2.0, x * factor + (factor - 1) / 2.0]
    return float(volume.index_to_lps(full)[0, 0])
