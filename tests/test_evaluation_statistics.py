"""Tests for peft_hyper.evaluation.statistics."""

import dataclasses
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from peft_hyper.evaluation.statistics import (
    PairedComparison,
    holm_adjust_comparisons,
    holm_correction,
    metric_disagreement,
    paired_comparison,
)


def _scores(seed: int, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    baseline = rng.uniform(0.3, 1.0, n)
    candidate = np.clip(baseline + rng.normal(-0.01, 0.08, n), 0, 1)
    return candidate, baseline


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_t_interval_and_p_values_match_scipy(seed, alpha):
    candidate, baseline = _scores(seed)
    margin = 0.03
    result = paired_comparison(candidate, baseline, margin=margin, alpha=alpha, n_bootstrap=500)

    reference = stats.ttest_rel(candidate, baseline)
    ci = reference.confidence_interval(confidence_level=1 - alpha)
    assert result.ci_t == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert result.p_difference == pytest.approx(reference.pvalue, rel=1e-12)
    ci = reference.confidence_interval(confidence_level=1 - 2 * alpha)
    assert result.ci_tost == pytest.approx((ci.low, ci.high), rel=1e-12)

    p_lower = stats.ttest_rel(candidate + margin, baseline, alternative="greater").pvalue
    p_upper = stats.ttest_rel(candidate - margin, baseline, alternative="less").pvalue
    assert result.p_noninferiority == pytest.approx(p_lower, rel=1e-9)
    assert result.p_tost == pytest.approx(max(p_lower, p_upper), rel=1e-9)

    delta = candidate - baseline
    assert result.n == len(candidate)
    assert result.mean_candidate == pytest.approx(candidate.mean())
    assert result.mean_baseline == pytest.approx(baseline.mean())
    assert result.mean_delta == pytest.approx(delta.mean())
    assert result.sd_delta == pytest.approx(delta.std(ddof=1))


@pytest.mark.parametrize("margin", [0.005, 0.01, 0.02, 0.03, 0.05])
@pytest.mark.parametrize("seed", range(4))
def test_flags_agree_with_interval_rules(margin, seed):
    candidate, baseline = _scores(seed, n=60)
    result = paired_comparison(candidate, baseline, margin=margin, n_bootstrap=200)
    low, high = result.ci_tost
    assert result.equivalent == (-margin < low and high < margin)
    assert result.non_inferior == (low > -margin)
    assert result.equivalent == (result.p_tost < result.alpha)


def test_equivalent_pair():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0, 1, 200)
    candidate = baseline + rng.normal(0, 0.01, 200)
    result = paired_comparison(candidate, baseline, margin=0.05)
    assert result.equivalent and result.non_inferior
    assert not result.degenerate
    assert -0.05 < result.ci_bootstrap[0] < result.ci_bootstrap[1] < 0.05
    assert result.ci_t[0] < result.ci_tost[0] < result.ci_tost[1] < result.ci_t[1]


def test_inferior_pair():
    rng = np.random.default_rng(1)
    baseline = rng.uniform(0.4, 1, 200)
    candidate = baseline - 0.2 + rng.normal(0, 0.05, 200)
    result = paired_comparison(candidate, baseline, margin=0.05)
    assert not result.equivalent and not result.non_inferior
    assert result.p_tost > 0.5 and result.p_noninferiority > 0.5
    assert result.ci_bootstrap[1] < -0.15


def test_bootstrap_is_seeded():
    candidate, baseline = _scores(3)
    first = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=1000, seed=7)
    again = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=1000, seed=7)
    other = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=1000, seed=8)
    assert first == again
    assert first.ci_bootstrap != other.ci_bootstrap


def test_bootstrap_ci_coverage():
    # Bounded, skewed per-item scores as produced by F1-like metrics; the true mean difference is known.
    rng = np.random.default_rng(1234)
    n_items, true_delta, covered = 50, 0.04, 0
    n_simulations = 200
    for simulation in range(n_simulations):
        baseline = rng.beta(2, 5, n_items)
        candidate = baseline + rng.normal(true_delta, 0.1, n_items)
        result = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=1000, seed=simulation)
        covered += result.ci_bootstrap[0] <= true_delta <= result.ci_bootstrap[1]
    assert 0.9 <= covered / n_simulations <= 0.99


def test_bootstrap_handles_discrete_scores():
    baseline = np.zeros(30)
    candidate = np.zeros(30)
    candidate[0] = 1.0  # one flipped exact-match item: BCa's jackknife is degenerate
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=500)
    assert all(math.isfinite(v) for v in result.ci_bootstrap)
    assert result.ci_bootstrap[0] <= result.mean_delta <= result.ci_bootstrap[1]


@pytest.mark.parametrize(
    ("delta", "equivalent", "non_inferior"),
    [(0.0, True, True), (0.02, True, True), (-0.02, True, True), (0.1, False, True), (-0.1, False, False)],
)
def test_zero_variance(delta, equivalent, non_inferior):
    baseline = np.array([0.2, 0.5, 0.7, 0.9])
    result = paired_comparison(baseline + delta, baseline, margin=0.05)
    assert result.degenerate
    assert result.sd_delta == 0.0
    assert result.equivalent is equivalent and result.non_inferior is non_inferior
    values = [result.p_tost, result.p_noninferiority, result.p_difference, *result.ci_t, *result.ci_bootstrap]
    assert not any(math.isnan(v) for v in values)
    assert result.ci_t == result.ci_bootstrap == result.ci_tost == pytest.approx((delta, delta))
    assert result.p_difference == (1.0 if delta == 0 else 0.0)


def test_zero_variance_exactly_on_margin_is_not_significant():
    result = paired_comparison([1.0, 1.0], [1.5, 1.5], margin=0.5)
    assert result.degenerate and not result.non_inferior and not result.equivalent


def test_float_noise_counts_as_zero_variance():
    # 0.3 - 0.2, 0.2 - 0.1 and 0.4 - 0.3 differ in the last bits; a t-test would report t ~ 1e15.
    result = paired_comparison([0.3, 0.2, 0.4], [0.2, 0.1, 0.3], margin=0.05)
    assert result.degenerate and result.non_inferior and not result.equivalent


def test_identical_arms():
    scores = np.array([1.0, 0.0, 1.0, 1.0])
    result = paired_comparison(scores, scores, margin=0.05)
    assert result.degenerate and result.equivalent and result.non_inferior
    assert result.mean_delta == 0.0


@pytest.mark.parametrize("margin", [0, -0.1, float("nan"), float("inf")])
def test_invalid_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        paired_comparison([0.1, 0.2], [0.1, 0.3], margin=margin)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="at least 2 items"):
        paired_comparison([1.0], [0.0], margin=0.05)
    with pytest.raises(ValueError, match="at least 2 items"):
        paired_comparison([], [], margin=0.05)
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([1.0, 0.0, 1.0], [0.0, 1.0], margin=0.05)
    with pytest.raises(ValueError, match="NaN"):
        paired_comparison([1.0, float("nan")], [0.0, 1.0], margin=0.05)
    with pytest.raises(ValueError, match="1-D"):
        paired_comparison([[1.0, 0.0]], [[0.0, 1.0]], margin=0.05)
    with pytest.raises(ValueError, match="alpha"):
        paired_comparison([1.0, 0.0], [0.0, 1.0], margin=0.05, alpha=0.7)


def test_serialisation_round_trip():
    candidate, baseline = _scores(0, n=30)
    result = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=200)
    data = result.to_dict()
    assert isinstance(data["ci_t"], list)
    assert PairedComparison.from_dict({**data, "extra": 1}) == result
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n = 3


def test_holm_hand_computed():
    # Sorted: d=0.005 (x4 -> 0.02), a=0.01 (x3 -> 0.03), c=0.03 (x2 -> 0.06), b=0.04 (x1 -> 0.04, monotone -> 0.06).
    adjusted = holm_correction({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(adjusted) == ["a", "b", "c", "d"]
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})


def test_holm_edge_cases():
    assert holm_correction({}) == {}
    assert holm_correction({"only": 0.03}) == {"only": 0.03}
    assert holm_correction({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    assert holm_correction({"a": 0.01, "b": 0.01}) == pytest.approx({"a": 0.02, "b": 0.02})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_correction({"a": 1.5})


def test_holm_adjust_comparisons_changes_flags():
    candidate, baseline = _scores(0, n=30)
    base = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=200)
    family = {
        "a": dataclasses.replace(base, p_tost=0.03, equivalent=True, p_noninferiority=0.001, non_inferior=True),
        "b": dataclasses.replace(base, p_tost=0.04, equivalent=True, p_noninferiority=0.02, non_inferior=True),
        "c": dataclasses.replace(base, p_tost=0.001, equivalent=True, p_noninferiority=0.2, non_inferior=False),
    }
    adjusted = holm_adjust_comparisons(family)
    assert adjusted["a"].p_tost_adjusted == pytest.approx(0.06)
    assert adjusted["c"].p_tost_adjusted == pytest.approx(0.003)
    assert [adjusted[k].equivalent for k in "abc"] == [False, False, True]
    assert adjusted["a"].p_noninferiority_adjusted == pytest.approx(0.003)
    assert adjusted["b"].p_noninferiority_adjusted == pytest.approx(0.04)
    assert [adjusted[k].non_inferior for k in "abc"] == [True, True, False]
    assert adjusted["a"].comparison is family["a"]
    with pytest.raises(ValueError, match="alpha"):
        holm_adjust_comparisons({"a": base, "b": dataclasses.replace(base, alpha=0.1)})


def test_metric_disagreement():
    rng = np.random.default_rng(5)
    baseline = rng.uniform(0.2, 0.9, 150)
    equivalent = paired_comparison(baseline + rng.normal(0, 0.01, 150), baseline, margin=0.05, n_bootstrap=200)
    inferior = paired_comparison(baseline - 0.2 + rng.normal(0, 0.01, 150), baseline, margin=0.05, n_bootstrap=200)
    better = paired_comparison(baseline + 0.2 + rng.normal(0, 0.01, 150), baseline, margin=0.05, n_bootstrap=200)

    assert metric_disagreement({"judge": equivalent, "exact_match": equivalent}) == []
    messages = metric_disagreement({"judge": equivalent, "token_f1": inferior}, benchmark="videoqa")
    assert any("equivalent by judge; not by token_f1" in m for m in messages)
    assert any("non-inferior by judge; not by token_f1" in m for m in messages)
    assert all(m.startswith("videoqa: ") for m in messages)
    messages = metric_disagreement({"judge": better, "token_f1": inferior})
    assert any("direction" in m and "better by judge" in m and "worse by token_f1" in m for m in messages)
    # Both conditions score 0 on every item by exact match (a degenerate comparison): it decides nothing, so it does
    # not "disagree" with token F1 — the report marks it degenerate instead.
    zeros = np.zeros(150)
    degenerate = paired_comparison(zeros, zeros, margin=0.05, n_bootstrap=200)
    assert degenerate.degenerate and degenerate.equivalent
    assert metric_disagreement({"exact_match": degenerate, "token_f1": inferior}) == []


def test_bootstrap_falls_back_to_percentile_when_bca_is_undefined(monkeypatch):
    real_bootstrap = stats.bootstrap
    methods = []

    def fake_bootstrap(*args, method, **kwargs):
        methods.append(method)
        result = real_bootstrap(*args, method=method, **kwargs)
        if method == "BCa":
            return dataclasses.replace(result, confidence_interval=type(result.confidence_interval)(np.nan, np.nan))
        return result

    monkeypatch.setattr(stats, "bootstrap", fake_bootstrap)
    candidate, baseline = _scores(0, n=30)
    result = paired_comparison(candidate, baseline, margin=0.05, n_bootstrap=200)
    assert methods == ["BCa", "percentile"]
    assert all(math.isfinite(v) for v in result.ci_bootstrap)
