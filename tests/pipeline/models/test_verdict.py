"""Calibration, indeterminate band and validated-domain check of the classifier's verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.processor import verdict_summary
from pipeline.stages.verdict import (
    DomainModel,
    VerdictPolicy,
    band_call,
    fit_domain,
    fit_temperature,
    image_statistics,
    softmax,
)
from pipeline.types import Classification, ModelInfo
from pipeline.writers.overlay_draw import classification_line
from tests.pipeline.models.phantoms import make_phantom


def _stats(seed: int) -> dict[str, float]:
    phantom = make_phantom(seed=seed)
    return image_statistics(phantom.volume, phantom.left | phantom.right)


@pytest.fixture(scope="module")
def domain() -> DomainModel:
    stats = [_stats(seed) for seed in range(4)]
    embeddings = [np.random.default_rng(s).normal(0, 1, 8).astype(np.float32) for s in range(4)]
    return fit_domain(stats, embeddings, fitted_on="4 test phantoms")


def test_every_fitting_case_is_inside_its_domain(domain: DomainModel) -> None:
    image, emb = domain.distances(_stats(1), np.random.default_rng(1).normal(0, 1, 8))
    assert image <= domain.limit and emb <= domain.embedding_limit


def test_domain_check_flags_an_out_of_domain_input(domain: DomainModel) -> None:
    phantom = make_phantom(seed=9)
    volume = phantom.volume
    # another scanner and patient: lungs 250 HU denser and much noisier than anything seen
    noisy = volume.hu + 250.0 + np.random.default_rng(0).normal(0, 120, volume.shape)
    shifted = type(volume)(**{**volume.__dict__, "hu": noisy.astype(np.float32)})
    policy = VerdictPolicy(temperature=2.0, domain=domain)
    stats = image_statistics(shifted, phantom.left | phantom.right)
    verdict = policy.judge([0.0, 9.0], 1, stats, np.zeros(8, np.float32))
    assert not verdict.in_validated_domain and verdict.call == "not assessed"
    assert verdict.domain_distance > domain.limit
    assert "p" not in verdict.statement.split("domain")[-1]  # no probability printed
    inside = policy.judge([0.0, 9.0], 1, _stats(2), np.random.default_rng(2).normal(0, 1, 8))
    assert inside.in_validated_domain and inside.call == "positive"


def test_a_model_without_a_domain_is_never_in_it() -> None:
    verdict = VerdictPolicy().judge([0.0, 12.0], 1, {}, None)
    assert verdict.p_covid_raw > 0.99999 and not verdict.in_validated_domain
    assert verdict.call == "not assessed" and math.isnan(verdict.domain_distance)


def test_temperature_fitted_on_overconfident_errors_softens_the_probabilities() -> None:
    # held-back cases: confident and mostly right, but two confident errors
    margins = np.array([8.0, 9.0, 7.5, -8.0, -9.0, -7.0, 8.5, -8.5])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    logits = np.stack([np.zeros_like(margins), margins], axis=1)
    temperature = fit_temperature(logits, labels)
    assert temperature > 3.0
    separable = fit_temperature(logits[:6], labels[:6])
    assert separable < temperature


def test_an_ambiguous_case_lands_in_the_indeterminate_band(domain: DomainModel) -> None:
    margins = np.array([8.0, 9.0, 7.5, -8.0, -9.0, -7.0, 8.5, -8.5])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    temperature = fit_temperature(np.stack([np.zeros(8), margins], axis=1), labels)
    policy = VerdictPolicy(temperature=temperature, domain=domain)
    ambiguous = [0.0, 2.5]  # raw p(COVID-19) 0.92: the uncalibrated call would be positive
    verdict = policy.judge(ambiguous, 1, _stats(0), np.random.default_rng(0).normal(0, 1, 8))
    assert verdict.p_covid_raw > 0.9
    assert 0.3 <= verdict.p_covid_calibrated < 0.7
    assert verdict.call == "indeterminate"
    assert band_call(0.1, 0.3, 0.7) == "negative" and band_call(0.7, 0.3, 0.7) == "positive"
    assert softmax([0.0, 2.5], temperature)[1] == pytest.approx(verdict.p_covid_calibrated)


def test_policy_round_trips_through_registry_metadata(domain: DomainModel) -> None:
    metadata = {"calibration": {"temperature": 2.5, "fitted_on": "x"},
                "decision": {"negative_below": 0.2, "positive_from": 0.8},
                "domain": domain.to_json()}
    policy = VerdictPolicy.from_metadata(metadata)
    assert policy.temperature == 2.5 and policy.positive_from == 0.8
    assert policy.domain == domain
    with pytest.raises(ValueError):
        VerdictPolicy(negative_below=0.8, positive_from=0.2)


def test_summary_and_overlay_carry_the_verdict_without_a_probability_out_of_domain() -> None:
    verdict = VerdictPolicy().judge([0.0, 12.0], 1, {}, None)
    classification = Classification(
        label="covid19", probabilities={"non-covid": 0.0, "covid19": 1.0}, p_covid=1.0,
        embedding=np.zeros(2, np.float32), model=ModelInfo("decovnet", "t"), verdict=verdict,
    )
    line = classification_line(classification)
    assert "outside the validated domain" in line and "1.00" not in line and "p=" not in line
    block = verdict_summary(classification)
    assert block["call"] == "not assessed" and block["in_validated_domain"] is False
    assert block["domain_distance"] is None  # NaN is written as null
