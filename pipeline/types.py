"""Typed, frozen values passed between pipeline stages.

Order of the stages (see ``pipeline.runner``): ``CTVolume`` -> ``LungMask`` ->
``Classification`` -> ``Lesion`` list -> ``StudyResult``. Arrays are indexed (z, y, x) where z
follows the sorted slice order of ``CTVolume.datasets`` (ascending position along the slice
normal), y the DICOM rows and x the DICOM columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydicom import Dataset


@dataclass(frozen=True)
class CTVolume:
    """A CT series as a volume in Hounsfield units with its LPS geometry.

    ``hu`` is float32 (z, y, x). ``spacing_mm`` is (z, y, x): slice spacing from positions,
    then PixelSpacing (row spacing, column spacing). ``origin_lps`` is the ImagePositionPatient
    of slice 0; ``direction`` is a 3x3 matrix whose columns are the unit vectors of the x
    (row direction), y (column direction) and z (slice normal) axes in LPS.
    ``datasets`` are the source headers (pixel data may be released) in the same z order.
    """

    hu: npt.NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction: npt.NDArray[np.float64]
    datasets: tuple[Dataset, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return int(z), int(y), int(x)

    @property
    def voxel_volume_ml(self) -> float:
        dz, dy, dx = self.spacing_mm
        return dz * dy * dx / 1000.0

    def index_to_lps(self, zyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map (z, y, x) voxel indices (N x 3, fractional allowed) to LPS millimetres."""
        idx = np.atleast_2d(np.asarray(zyx, dtype=np.float64))
        dz, dy, dx = self.spacing_mm
        steps = np.stack([idx[:, 2] * dx, idx[:, 1] * dy, idx[:, 0] * dz], axis=1)
        return np.asarray(self.origin_lps, dtype=np.float64) + steps @ self.direction.T


@dataclass(frozen=True)
class LungMask:
    """Left and right lung masks (bool, same shape as the volume) and how they were made."""

    left: npt.NDArray[np.bool_]
    right: npt.NDArray[np.bool_]
    method: str  # e.g. "morphological" or "unet2d-decovnet@1.0.0"

    @property
    def both(self) -> npt.NDArray[np.bool_]:
        return np.logical_or(self.left, self.right)


@dataclass(frozen=True)
class ModelInfo:
    """Identification of an algorithm or model, as written into SEG/SR algorithm identification."""

    name: str
    version: str
    sha256: str = ""  # weights checksum; empty for weight-free algorithms


@dataclass(frozen=True)
class Verdict:
    """What a classification may claim (``pipeline.stages.verdict``).

    ``call`` is "positive", "negative" or "indeterminate" from the calibrated probability and
    the decision band, or "not assessed" when the input lies outside the validated domain.
    """

    call: str
    p_covid_calibrated: float
    p_covid_raw: float
    in_validated_domain: bool
    domain_distance: float  # max |z| of the image statistics (NaN: no domain stored)
    embedding_distance: float  # RMS z of the embedding (0: none stored)
    domain_limit: float
    negative_below: float
    positive_from: float
    temperature: float
    calibration_fitted_on: str
    domain_fitted_on: str

    @property
    def statement(self) -> str:
        """One line for overlays and reports."""
        if not self.in_validated_domain:
            return "outside the validated domain: not assessed"
        return f"{self.call} (calibrated p(COVID-19) {self.p_covid_calibrated:.2f})"


@dataclass(frozen=True)
class Classification:
    """Output of a volume classifier.

    ``probabilities`` maps each configured class name (e.g. "covid19", "non-covid") to its
    probability; ``p_covid`` is the probability of the COVID-19 class.
    """

    label: str
    probabilities: dict[str, float]
    p_covid: float
    embedding: npt.NDArray[np.float32]
    model: ModelInfo
    activation: npt.NDArray[np.float32] | None = None  # CAM in volume space, 0..1, optional
    verdict: Verdict | None = None  # calibration, band and domain check (None: not judged)


@dataclass(frozen=True)
class Lesion:
    """One localized lesion candidate (connected region) with its measurements."""

    number: int  # 1-based, ordered by decreasing volume
    mask: npt.NDArray[np.bool_]
    volume_ml: float
    centroid_lps: tuple[float, float, float]
    side: str  # "left", "right" or "bilateral"
    mean_hu: float
    peak_activation: float
    largest_slice: int  # z index of the axial slice where the lesion is largest
    method: str = "cam"  # "cam" (activation map + 3DCC) or "intensity" (weight-free fallback)


@dataclass(frozen=True)
class LungStats:
    """Per-lung measurements."""

    side: str  # "left" or "right"
    volume_ml: float
    mean_hu: float
    lesion_burden_percent: float | None = None


@dataclass(frozen=True)
class StudyResult:
    """Everything the pipeline concluded about one CT series."""

    volume: CTVolume
    lungs: LungMask
    lung_stats: tuple[LungStats, ...]
    classification: Classification | None = None
    lesions: tuple[Lesion, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    algorithms: tuple[ModelInfo, ...] = ()
