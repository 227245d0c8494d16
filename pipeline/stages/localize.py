"""Lesion localization from DeCoVNet's activation map and 3DCC candidates (models.md §1.6).

The paper's steps: keep the top 5 % of the CAM (50-bin histogram, counted from the top), AND
the image above uint8 level 75 of the [-1200, 600] window (about -664 HU), only in the slice
range where the lungs are large, label in 3D (26-connectivity), and intersect with the 3DCC
candidate region. Beyond the paper, every component inside the lungs that reaches a volume
threshold is reported (not just one per patient), each with its measurements, numbered by
decreasing volume; and the 3DCC candidates keep all their components.

3DCC input: the original fed its raw U-Net lung mask, which fragments around lesions. Our lung
masks are refined (holes filled), so 3DCC runs on the *aerated* lung instead: lung voxels at
or below the same intensity threshold (-664 HU). A CAM component is kept when it overlaps a
3DCC candidate (``use_3dcc=True``) or always (``use_3dcc=False``). When no region reaches a
candidate, the regions are kept: the paper's 3DCC step picks among CAM regions (its argmax
returns one even with no overlap), it does not empty the result.

Without an activation map (a classifier that has none), the seed is intensity-based instead:
lung voxels above the threshold whose 5 mm neighbourhood is at least 40 % such voxels (patchy
opacities, not thin vessels); the slice range and 3DCC steps are the same. This fallback is a
heuristic, not the paper's method; its lesions carry ``peak_activation`` 0.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.preprocessing import Box, bounding_box, window_uint8
from pipeline.stages.cc3d import cc3d_candidates
from pipeline.stages.vessel_filter import shape_facts
from pipeline.types import Classification, CTVolume, Lesion, LungMask, ModelInfo

logger = logging.getLogger(__name__)

LOCALIZER_NAME = "decovnet-cam-3dcc"
LOCALIZER_VERSION = "1.2.0"  # 1.1: 3DCC never empties the CAM regions; 1.2: vessels dropped
CAM_HISTOGRAM_BINS = 50
CAM_TOP_SHARE = 0.05  # share of the box's voxels kept from the top of the CAM histogram
INTENSITY_LEVEL_MIN = 75  # uint8 level of the [-1200, 600] window (about -664 HU)
SLICE_RANGE_EDGE_SHARE = 0.2  # the max-area slice is searched away from the first/last 20 %
SLICE_RANGE_AREA_SHARE = 0.4  # the range extends while the lung area is >= 40 % of the max
MIN_LESION_VOLUME_ML = 0.5
MAX_LESIONS = 10  # each Lesion holds a full-volume mask (~79 MB at 300 x 512 x 512)
BILATERAL_MIN_SHARE = 0.1  # a lesion is bilateral when each lung holds >= 10 % of it
FALLBACK_WINDOW_MM = 5.0  # side of the local-density window of the no-CAM fallback
FALLBACK_DENSITY_MIN = 0.4  # share of dense voxels in that window for a lesion seed

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def top_share_threshold(
    values: npt.NDArray[np.floating],
    share: float = CAM_TOP_SHARE,
    bins: int = CAM_HISTOGRAM_BINS,
) -> float:
    """The histogram bin edge at which the count accumulated from the top first exceeds ``share``.

    ``values > threshold`` then keeps at least ``share`` of the voxels (whole bins).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.size == 0:
        raise ValueError("no values")
    counts, edges = np.histogram(v, bins=bins)
    cumulative = np.cumsum(counts[::-1])
    first = int(np.argmax(cumulative > share * v.size))
    return float(edges[bins - 1 - first])


def lung_slice_range(
    areas: npt.ArrayLike,
    edge_share: float = SLICE_RANGE_EDGE_SHARE,
    area_share: float = SLICE_RANGE_AREA_SHARE,
) -> tuple[int, int]:
    """[first, stop) of the slices around the largest lung section with area >= 40 % of it.

    The largest section is searched ignoring the first and last 20 % of the slices.
    """
    a = np.asarray(areas, dtype=np.float64)
    n = a.size
    if n == 0:
        return 0, 0
    lo, hi = int(math.floor(edge_share * n)), int(math.ceil((1.0 - edge_share) * n))
    if hi <= lo:
        lo, hi = 0, n
    peak = lo + int(np.argmax(a[lo:hi]))
    thresh = area_share * a[peak]
    first = peak
    while first > 0 and a[first - 1] >= thresh:
        first -= 1
    stop = peak + 1
    while stop < n and a[stop] >= thresh:
        stop += 1
    return first, stop


class CamLesionLocalizer:
    """Every CAM lesion in the lungs above ``min_volume_ml``; satisfies ``LesionLocalizer``."""

    def __init__(
        self,
        min_volume_ml: float = MIN_LESION_VOLUME_ML,
        top_share: float = CAM_TOP_SHARE,
        intensity_level_min: int = INTENSITY_LEVEL_MIN,
        restrict_slice_range: bool = True,
        use_3dcc: bool = True,
        max_lesions: int = MAX_LESIONS,
        drop_vessels: bool = True,
    ) -> None:
        if min_volume_ml < 0:
            raise ValueError(f"min_volume_ml must be >= 0, got {min_volume_ml}")
        if not 0.0 < top_share < 1.0:
            raise ValueError(f"top_share must be in (0, 1), got {top_share}")
        if not 0 <= intensity_level_min <= 255:
            raise ValueError(f"intensity_level_min must be 0..255, got {intensity_level_min}")
        if max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, got {max_lesions}")
        self.min_volume_ml = min_volume_ml
        self.top_share = top_share
        self.intensity_level_min = intensity_level_min
        self.restrict_slice_range = restrict_slice_range
        self.use_3dcc = use_3dcc
        self.max_lesions = max_lesions
        self.drop_vessels = drop_vessels  # vessel_filter: tubular and hilar candidates go

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(LOCALIZER_NAME, LOCALIZER_VERSION)

    def localize(
        self, volume: CTVolume, lungs: LungMask, classification: Classification | None
    ) -> tuple[Lesion, ...]:
        started = time.perf_counter()
        lung = lungs.both
        box = bounding_box(lung)
        if box is None:
            logger.info("no lungs: no lesions")
            return ()
        lung_b = lung[box.slices]
        hu_b = volume.hu[box.slices]
        dense = (window_uint8(hu_b) > self.intensity_level_min) & lung_b
        activation = classification.activation if classification is not None else None
        act_b: npt.NDArray[np.float32] | None = None
        if activation is not None:
            if activation.shape != volume.shape:
                raise ValueError(
                    f"activation {activation.shape} does not match the volume {volume.shape}"
                )
            act_b = activation[box.slices]
            if float(act_b.max()) > 0.0:
                seed = (act_b > top_share_threshold(act_b, self.top_share)) & dense
            else:
                # A flat map (the class has no positive evidence anywhere, as with an
                # under-trained model) would localize nothing: say so and fall back.
                logger.warning("activation map is empty: lesions from the intensity fallback")
                act_b = None
        if act_b is None:
            seed = self._intensity_seed(dense, volume.spacing_mm)
        if self.restrict_slice_range:
            first, stop = lung_slice_range(lung_b.sum(axis=(1, 2)))
            seed[:first] = False
            seed[stop:] = False
        labels, count = ndimage.label(seed, structure=_CONNECTIVITY_26)
        keep = self._components_to_keep(labels, count, lung_b & ~dense, volume.voxel_volume_ml)
        if self.drop_vessels:  # the largest few only: each check costs a ridge filter
            keep = self._not_vessels(
                labels, keep[: 3 * self.max_lesions], hu_b, lungs, box, volume.spacing_mm
            )
        if len(keep) > self.max_lesions:
            logger.info("keeping the %d largest of %d lesions", self.max_lesions, len(keep))
        keep = keep[: self.max_lesions]
        lesions = self._lesions(labels, keep, box, volume, lungs, act_b)
        logger.info(
            "localized %d lesion(s) (%s, %d seed components) in %.2f s",
            len(lesions),
            "CAM" if act_b is not None else "intensity fallback",
            count,
            time.perf_counter() - started,
        )
        return lesions

    def _intensity_seed(
        self, dense: npt.NDArray[np.bool_], spacing_mm: tuple[float, float, float]
    ) -> npt.NDArray[np.bool_]:
        """Lung voxels whose ~5 mm neighbourhood is mostly dense: patchy opacities pass, thin
        vessels (a 3 mm vessel fills under 30 % of the window) do not."""
        size = [max(1, 2 * int(round(FALLBACK_WINDOW_MM / s / 2)) + 1) for s in spacing_mm]
        density = ndimage.uniform_filter(dense.astype(np.float32), size=size, mode="constant")
        return (density >= FALLBACK_DENSITY_MIN) & dense

    def _components_to_keep(
        self,
        labels: npt.NDArray[np.int32],
        count: int,
        aerated: npt.NDArray[np.bool_],
        voxel_ml: float,
    ) -> list[int]:
        """Labels large enough (and overlapping a 3DCC candidate), largest first."""
        if count == 0:
            return []
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        min_voxels = max(1, int(math.ceil(self.min_volume_ml / voxel_ml)))
        large = sizes >= min_voxels
        if self.use_3dcc:
            candidates = cc3d_candidates(aerated, keep_all=True)
            hit = np.zeros(count + 1, dtype=bool)
            hit[np.unique(labels[candidates])] = True
            hit[0] = False
            if (large & hit).any():
                large &= hit
            elif large.any():
                # The paper's 3DCC chooses among the CAM regions and never empties the result
                # (with no overlap its argmax still returns a region): keep the CAM's regions.
                logger.info("no CAM region overlaps a 3DCC candidate: keeping the CAM's regions")
        return [int(i) for i in np.argsort(sizes, kind="stable")[::-1] if large[i]]

    def _not_vessels(
        self,
        labels: npt.NDArray[np.int32],
        keep: list[int],
        hu_b: npt.NDArray[np.float32],
        lungs: LungMask,
        box: Box,
        spacing_mm: tuple[float, float, float],
    ) -> list[int]:
        """``keep`` less the components that are vessels, airway walls or hilar structures."""
        out: list[int] = []
        objects = ndimage.find_objects(labels)
        left_b, right_b = lungs.left[box.slices], lungs.right[box.slices]
        for label in keep:
            region = objects[label - 1]
            if region is None:
                continue
            zs = region[0]
            in_slab = (slice(0, zs.stop - zs.start), region[1], region[2])
            facts = shape_facts(
                hu_b[zs], labels[zs] == label, left_b[zs], right_b[zs], spacing_mm, in_slab
            )
            if facts.is_vessel:
                logger.info(
                    "dropped a vessel-like candidate (tubular share %.2f, hilar share %.2f)",
                    facts.tube_share, facts.hilar_share,
                )
                continue
            logger.info("kept candidate: tubular share %.2f, hilar share %.2f",
                         facts.tube_share, facts.hilar_share)
            out.append(label)
        return out

    def _lesions(
        self,
        labels: npt.NDArray[np.int32],
        keep: list[int],
        box: Box,
        volume: CTVolume,
        lungs: LungMask,
        act_b: npt.NDArray[np.float32] | None,
    ) -> tuple[Lesion, ...]:
        out: list[Lesion] = []
        objects = ndimage.find_objects(labels)
        left_b = lungs.left[box.slices]
        right_b = lungs.right[box.slices]
        hu_b = volume.hu[box.slices]
        offset = np.array([box.z0, box.y0, box.x0], dtype=np.float64)
        for number, label in enumerate(keep, start=1):
            region = objects[label - 1]
            if region is None:
                continue
            part = labels[region] == label
            n = int(part.sum())
            idx = np.argwhere(part).astype(np.float64)
            corner = np.array([s.start for s in region], dtype=np.float64)
            centroid = idx.mean(axis=0) + corner + offset
            n_left = int((left_b[region] & part).sum())
            n_right = int((right_b[region] & part).sum())
            if min(n_left, n_right) >= BILATERAL_MIN_SHARE * n:
                side = "bilateral"
            else:
                side = "left" if n_left >= n_right else "right"
            areas = part.sum(axis=(1, 2))
            mask = np.zeros(volume.shape, dtype=bool)
            full_region = tuple(
                slice(s.start + o, s.stop + o)
                for s, o in zip(region, (box.z0, box.y0, box.x0), strict=True)
            )
            mask[full_region] = part
            peak = float(act_b[region][part].max()) if act_b is not None else 0.0
            lps = volume.index_to_lps(centroid)[0]
            out.append(
                Lesion(
                    number=number,
                    mask=mask,
                    volume_ml=n * volume.voxel_volume_ml,
                    centroid_lps=(float(lps[0]), float(lps[1]), float(lps[2])),
                    side=side,
                    mean_hu=float(hu_b[region][part].mean()),
                    peak_activation=peak,
                    largest_slice=int(region[0].start + box.z0 + int(np.argmax(areas))),
                    method="cam" if act_b is not None else "intensity",
                )
            )
        return tuple(out)
