"""What a classifier's output may honestly claim: calibration, an indeterminate band, a domain.

- **Calibration**: temperature scaling. The logits are divided by ``temperature`` before the
  softmax; the temperature is fitted on held-back cases (``fit_temperature``) and stored,
  with where it was fitted, in the model's registry metadata (``calibration``).
- **Decision band**: a calibrated p(COVID-19) below ``negative_below`` is *negative*, from
  ``positive_from`` up *positive*, in between *indeterminate* (``decision``).
- **Validated domain**: simple image statistics of the input (pixel and slice size, lung
  volume, lung HU percentiles, share of dense lung, noise) and the network's embedding are
  compared with the cases the model was validated on (``domain``: per-feature mean and
  spread, and a limit on the largest standardised distance). An input beyond the limit is
  *outside the validated domain*: its call is ``not assessed`` whatever the probability.

A model without these metadata gets no calibration (temperature 1), the default band, and an
unknown domain, which is reported as outside it: nothing claims a validation it never had.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipeline.types import CTVolume, Verdict

DEFAULT_NEGATIVE_BELOW = 0.3
DEFAULT_POSITIVE_FROM = 0.7
DOMAIN_FEATURES = (
    "pixel_mm", "slice_mm", "lung_volume_l", "lung_hu_p10", "lung_hu_median", "lung_hu_p90",
    "lung_dense_share", "noise_hu",
)
DENSE_HU = -500.0
PARENCHYMA_HU_MAX = -700.0
STATS_SLICE_STEP = 4  # every 4th slice, every 2nd pixel: statistics, not a segmentation
MIN_SPREAD = 1e-3  # floor of a feature's spread, so a constant feature cannot divide by 0


def image_statistics(volume: CTVolume, lungs: npt.NDArray[np.bool_]) -> dict[str, float]:
    """The domain features of one input (see ``DOMAIN_FEATURES``)."""
    step = (slice(None, None, STATS_SLICE_STEP), slice(None, None, 2), slice(None, None, 2))
    hu = volume.hu[step]
    mask = lungs[step]
    values = hu[mask] if mask.any() else np.array([-1000.0], np.float32)
    p10, median, p90 = (float(v) for v in np.percentile(values, [10, 50, 90]))
    return {
        "pixel_mm": float(min(volume.spacing_mm[1], volume.spacing_mm[2])),
        "slice_mm": float(volume.spacing_mm[0]),
        "lung_volume_l": float(lungs.sum()) * volume.voxel_volume_ml / 1000.0,
        "lung_hu_p10": p10,
        "lung_hu_median": median,
        "lung_hu_p90": p90,
        "lung_dense_share": float((values > DENSE_HU).mean()),
        "noise_hu": _noise_hu(volume.hu, lungs),
    }


def _noise_hu(hu: npt.NDArray[np.float32], lungs: npt.NDArray[np.bool_]) -> float:
    """Robust spread of HU minus its 3x3 in-plane mean, in aerated lung of 5 central slices."""
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    if zs.size == 0:
        return 0.0
    picks = zs[np.linspace(0, zs.size - 1, 7).round().astype(int)[1:-1]]
    residuals = []
    for z in picks:
        smooth = ndimage.uniform_filter(hu[z], size=3)
        aerated = lungs[z] & (smooth < PARENCHYMA_HU_MAX)
        residuals.append((hu[z] - smooth)[aerated])
    r = np.concatenate(residuals) if residuals else np.zeros(1, np.float32)
    if r.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


@dataclass(frozen=True)
class DomainModel:
    """Mean and spread of the domain features and embedding over the validated cases."""

    mean: dict[str, float]
    spread: dict[str, float]
    limit: float  # largest standardised distance (max |z| over the image features) accepted
    embedding_mean: tuple[float, ...] = ()
    embedding_spread: tuple[float, ...] = ()
    embedding_limit: float = math.inf  # largest RMS z of the embedding accepted
    fitted_on: str = ""

    def distances(
        self, stats: Mapping[str, float], embedding: npt.NDArray[np.float32] | None
    ) -> tuple[float, float]:
        """(max |z| of the image features, RMS z of the embedding; 0 when not stored)."""
        zs = [abs(stats[k] - self.mean[k]) / max(self.spread[k], MIN_SPREAD) for k in self.mean]
        image = max(zs) if zs else 0.0
        emb = 0.0
        if embedding is not None and self.embedding_mean:
            e = np.asarray(embedding, np.float64).ravel()
            m = np.asarray(self.embedding_mean)
            s = np.maximum(np.asarray(self.embedding_spread), MIN_SPREAD)
            if e.size == m.size:
                emb = float(np.sqrt(np.mean(((e - m) / s) ** 2)))
        return image, emb

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean, "spread": self.spread, "limit": self.limit,
            "embedding_mean": list(self.embedding_mean),
            "embedding_spread": list(self.embedding_spread),
            "embedding_limit": self.embedding_limit if math.isfinite(self.embedding_limit)
            else None,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DomainModel:
        limit = raw.get("embedding_limit")
        return cls(
            mean={str(k): float(v) for k, v in raw["mean"].items()},
            spread={str(k): float(v) for k, v in raw["spread"].items()},
            limit=float(raw["limit"]),
            embedding_mean=tuple(float(v) for v in raw.get("embedding_mean", ())),
            embedding_spread=tuple(float(v) for v in raw.get("embedding_spread", ())),
            embedding_limit=math.inf if limit is None else float(limit),
            fitted_on=str(raw.get("fitted_on", "")),
        )


@dataclass(frozen=True)
class VerdictPolicy:
    """Calibration, decision band and domain of one model (from its registry metadata)."""

    temperature: float = 1.0
    calibration_fitted_on: str = ""
    negative_below: float = DEFAULT_NEGATIVE_BELOW
    positive_from: float = DEFAULT_POSITIVE_FROM
    domain: DomainModel | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.negative_below <= self.positive_from <= 1.0:
            raise ValueError("need 0 <= negative_below <= positive_from <= 1")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> VerdictPolicy:
        calibration = metadata.get("calibration") or {}
        decision = metadata.get("decision") or {}
        domain = metadata.get("domain")
        return cls(
            temperature=float(calibration.get("temperature", 1.0)),
            calibration_fitted_on=str(calibration.get("fitted_on", "")),
            negative_below=float(decision.get("negative_below", DEFAULT_NEGATIVE_BELOW)),
            positive_from=float(decision.get("positive_from", DEFAULT_POSITIVE_FROM)),
            domain=DomainModel.from_json(domain) if domain else None,
        )

    def judge(
        self,
        logits: Sequence[float],
        positive: int,
        stats: Mapping[str, float],
        embedding: npt.NDArray[np.float32] | None,
    ) -> Verdict:
        """The verdict for one input from its raw logits, image statistics and embedding."""
        raw = softmax(logits, 1.0)[positive]
        p = softmax(logits, self.temperature)[positive]
        if self.domain is None:
            in_domain, image_d, emb_d, limit = False, math.nan, math.nan, math.nan
        else:
            image_d, emb_d = self.domain.distances(stats, embedding)
            limit = self.domain.limit
            in_domain = image_d <= limit and emb_d <= self.domain.embedding_limit
        call = band_call(p, self.negative_below, self.positive_from) if in_domain else (
            "not assessed")
        return Verdict(
            call=call, p_covid_calibrated=p, p_covid_raw=raw, in_validated_domain=in_domain,
            domain_distance=image_d, embedding_distance=emb_d, domain_limit=limit,
            negative_below=self.negative_below, positive_from=self.positive_from,
            temperature=self.temperature, calibration_fitted_on=self.calibration_fitted_on,
            domain_fitted_on=self.domain.fitted_on if self.domain else "",
        )


def softmax(logits: Sequence[float], temperature: float) -> npt.NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max()
    e = np.exp(z)
    return np.asarray(e / e.sum())


def band_call(p: float, negative_below: float, positive_from: float) -> str:
    """'negative', 'indeterminate' or 'positive' for a calibrated probability."""
    if p < negative_below:
        return "negative"
    if p >= positive_from:
        return "positive"
    return "indeterminate"


def fit_temperature(
    logits: npt.ArrayLike, labels: npt.ArrayLike, positive: int = 1
) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (1 = positive).

    A grid over log T (0.25 .. 50) followed by a local refinement: robust for a handful of
    cases, where gradient steps are not worth it.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if z.ndim != 2 or z.shape[0] != y.size or y.size == 0:
        raise ValueError("need (n, classes) logits and n labels")
    margin = z[:, positive] - np.delete(z, positive, axis=1).max(axis=1)
    signed = np.where(y, margin, -margin)

    def nll(t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -signed / t)))

    grid = np.exp(np.linspace(math.log(0.25), math.log(50.0), 200))
    best = float(grid[int(np.argmin([nll(t) for t in grid]))])
    fine = best * np.exp(np.linspace(-0.05, 0.05, 41))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def fit_domain(
    stats: Sequence[Mapping[str, float]],
    embeddings: Sequence[npt.NDArray[np.float32]] | None,
    fitted_on: str,
    margin: float = 1.5,
) -> DomainModel:
    """Mean and spread (standard deviation) per feature; the limits are ``margin`` times the
    largest distance of a fitting case, so every fitting case is inside its own domain."""
    if not stats:
        raise ValueError("no cases to fit the domain on")
    keys = list(DOMAIN_FEATURES)
    table = np.array([[float(s[k]) for k in keys] for s in stats])
    mean = table.mean(axis=0)
    spread = np.maximum(table.std(axis=0), MIN_SPREAD)
    partial = DomainModel(dict(zip(keys, mean.tolist(), strict=True)),
                          dict(zip(keys, spread.tolist(), strict=True)), math.inf)
    emb_mean: tuple[float, ...] = ()
    emb_spread: tuple[float, ...] = ()
    emb_limit = math.inf
    if embeddings:
        e = np.stack([np.asarray(v, np.float64).ravel() for v in embeddings])
        emb_mean = tuple(e.mean(axis=0).tolist())
        emb_spread = tuple(np.maximum(e.std(axis=0), MIN_SPREAD).tolist())
    with_emb = DomainModel(partial.mean, partial.spread, math.inf, emb_mean, emb_spread)
    distances = [with_emb.distances(s, embeddings[i] if embeddings else None)
                 for i, s in enumerate(stats)]
    limit = margin * max(d[0] for d in distances)
    if embeddings:
        emb_limit = margin * max(d[1] for d in distances)
    return DomainModel(partial.mean, partial.spread, limit, emb_mean, emb_spread, emb_limit,
                       fitted_on)
