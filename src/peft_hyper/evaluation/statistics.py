"""Paired statistics for the Frames2LoRA claim: adapter-only answers are equivalent / non-inferior to in-context ones.

Every comparison is *paired*: the same items are answered by a candidate condition (e.g. the adapter, no video in
context) and by the baseline (the video in context), and the unit of analysis is the per-item difference
``Δ = candidate - baseline`` of a metric score.

Decision rule
-------------
The ``equivalent`` and ``non_inferior`` flags are decided by **paired t-tests** (TOST for equivalence, one one-sided
test for non-inferiority), not by the bootstrap interval:

* ``p_tost = max(p(H0: Δ <= -margin), p(H0: Δ >= +margin))`` and ``equivalent = p_tost < alpha``. This is exactly the
  same decision as "the two-sided ``1 - 2 * alpha`` (90 % for ``alpha=0.05``) t confidence interval of the mean Δ lies
  strictly inside ``(-margin, +margin)``", which is stored as [`PairedComparison.ci_tost`].
* ``p_noninferiority = p(H0: Δ <= -margin)`` and ``non_inferior = p_noninferiority < alpha`` (the one-sided
  ``1 - alpha`` lower t bound is above ``-margin``).

The t-test is used because it yields p-values, which the Holm correction across benchmarks needs, and because it is
the textbook TOST; per-item scores are bounded, so with the tens-to-hundreds of items of a benchmark the mean Δ is
close to normal. The paired bootstrap interval ([`PairedComparison.ci_bootstrap`], BCa by default) is reported next
to the t interval as a distribution-free check.

Degenerate data: when all Δ are identical (zero variance, e.g. both arms answer every item the same way) the t
statistic is undefined. Instead of NaN, the tests are decided by the sign of the distance to each margin: a p-value
is ``0.0`` when the common Δ lies strictly on the alternative's side of the margin and ``1.0`` otherwise (the limit of
the t-test as the variance goes to zero; ties with the margin are never significant). Both intervals collapse to
``(Δ, Δ)`` and [`PairedComparison.degenerate`] is set.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "HolmAdjustedComparison",
    "PairedComparison",
    "holm_adjust_comparisons",
    "holm_correction",
    "metric_disagreement",
    "paired_comparison",
]

K = TypeVar("K", bound=Hashable)

# Relative tolerance under which all per-item differences count as identical (floating-point noise such as
# ``0.3 - 0.2 != 0.2 - 0.1`` would otherwise give t statistics of 1e15 instead of a zero-variance case).
_DEGENERATE_RTOL = 1e-12


@dataclass(frozen=True)
class PairedComparison:
    """Result of [`paired_comparison`] for one metric: candidate condition vs baseline on the same items.

    All intervals are for the mean of ``Δ = candidate - baseline``. ``ci_t`` and ``ci_bootstrap`` are two-sided at
    level ``1 - alpha`` (95 % by default); ``ci_tost`` is the two-sided ``1 - 2 * alpha`` t interval (90 %) whose
    inclusion in ``(-margin, margin)`` is equivalent to ``equivalent``.
    """

    n: int
    margin: float
    alpha: float
    mean_candidate: float
    mean_baseline: float
    mean_delta: float
    sd_delta: float
    ci_t: tuple[float, float]
    ci_bootstrap: tuple[float, float]
    ci_tost: tuple[float, float]
    p_difference: float
    p_tost: float
    p_noninferiority: float
    equivalent: bool
    non_inferior: bool
    degenerate: bool
    bootstrap_method: str
    n_bootstrap: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (intervals become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairedComparison:
        """Inverse of [`to_dict`]; unknown keys are ignored."""
        kwargs = {}
        for f in fields(cls):
            value = data[f.name]
            kwargs[f.name] = tuple(float(v) for v in value) if f.name.startswith("ci_") else value
        return cls(**kwargs)


@dataclass(frozen=True)
class HolmAdjustedComparison:
    """A [`PairedComparison`] with Holm-adjusted TOST / non-inferiority p-values and the flags they give."""

    comparison: PairedComparison
    p_tost_adjusted: float
    p_noninferiority_adjusted: float
    equivalent: bool
    non_inferior: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {
            "p_tost_adjusted": self.p_tost_adjusted,
            "p_noninferiority_adjusted": self.p_noninferiority_adjusted,
            "equivalent": self.equivalent,
            "non_inferior": self.non_inferior,
        }


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D sequence of per-item scores, got an array of shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite scores; score every item (e.g. 0.0 for a failed answer).")
    return array


def _validate_settings(margin: float, alpha: float, n_bootstrap: int) -> None:
    if not (isinstance(margin, numbers.Real) and math.isfinite(margin) and margin > 0):
        raise ValueError(
            f"`margin` must be a positive finite number on the metric's scale (e.g. 0.05 for 5 points of accuracy), "
            f"got {margin!r}. Pre-register it before looking at the data."
        )
    if not (0 < alpha < 0.5):
        raise ValueError(f"`alpha` must be in (0, 0.5), got {alpha!r}; 0.05 is the usual choice.")
    if int(n_bootstrap) < 100:
        raise ValueError(f"`n_bootstrap` must be at least 100 (10_000 recommended), got {n_bootstrap!r}.")


def _degenerate_p(distance: float) -> float:
    """p-value of a one-sided test whose alternative is ``distance > 0``, for zero-variance data."""
    return 0.0 if distance > 0 else 1.0


def _bootstrap_ci(
    delta: np.ndarray, confidence_level: float, n_bootstrap: int, seed: int, method: str
) -> tuple[float, float]:
    # Resampling the per-item differences is the paired bootstrap: items are resampled, both arms stay together.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (delta,),
            np.mean,
            n_resamples=n_bootstrap,
            vectorized=True,
            confidence_level=confidence_level,
            method=method,
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)) and method.lower() != "percentile":
        # BCa is undefined when the jackknife is degenerate (e.g. a single non-zero Δ); fall back to percentile.
        return _bootstrap_ci(delta, confidence_level, n_bootstrap, seed, "percentile")
    return low, high


def paired_comparison(
    candidate: ArrayLike,
    baseline: ArrayLike,
    *,
    margin: float,
    alpha: float = 0.05,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    bootstrap_method: str = "BCa",
) -> PairedComparison:
    """Compare per-item scores of a candidate condition with a baseline on the same items.

    Args:
        candidate: Per-item scores of the candidate (e.g. adapter only, no video in context).
        baseline: Per-item scores of the baseline (e.g. video in context), aligned item by item with `candidate`.
        margin: Equivalence / non-inferiority margin on the metric's scale (e.g. ``0.05``); must be > 0.
        alpha: Significance level of each one-sided test. Two-sided intervals are reported at ``1 - alpha``.
        n_bootstrap: Number of bootstrap resamples.
        seed: Seed of the bootstrap's random generator (the result is deterministic given the seed).
        bootstrap_method: ``"BCa"`` (default), ``"percentile"`` or ``"basic"``, as in `scipy.stats.bootstrap`.

    Returns:
        A frozen [`PairedComparison`]. See the module docstring for the decision rule and degenerate cases.

    Raises:
        ValueError: On mismatched lengths, fewer than 2 items, non-finite scores, or invalid settings.
    """
    _validate_settings(margin, alpha, n_bootstrap)
    cand = _as_scores(candidate, "candidate")
    base = _as_scores(baseline, "baseline")
    if cand.shape != base.shape:
        raise ValueError(
            f"`candidate` and `baseline` must score the same items in the same order, got {cand.size} and "
            f"{base.size} scores."
        )
    n = int(cand.size)
    if n < 2:
        raise ValueError(f"A paired comparison needs at least 2 items, got {n}; evaluate on more items.")

    margin = float(margin)
    alpha = float(alpha)
    delta = cand - base
    mean_delta = float(np.mean(delta))
    scale = max(1.0, float(np.max(np.abs(delta))))
    degenerate = bool(np.ptp(delta) <= _DEGENERATE_RTOL * scale)

    if degenerate:
        sd_delta = 0.0
        ci_t = ci_bootstrap = ci_tost = (mean_delta, mean_delta)
        p_difference = 0.0 if mean_delta != 0 else 1.0
        p_noninferiority = _degenerate_p(mean_delta + margin)
        p_superiority_bound = _degenerate_p(margin - mean_delta)
    else:
        sd_delta = float(np.std(delta, ddof=1))
        difference = stats.ttest_rel(cand, base)
        p_difference = float(difference.pvalue)
        ci = difference.confidence_interval(confidence_level=1 - alpha)
        ci_t = (float(ci.low), float(ci.high))
        ci = difference.confidence_interval(confidence_level=1 - 2 * alpha)
        ci_tost = (float(ci.low), float(ci.high))
        p_noninferiority = float(stats.ttest_1samp(delta, -margin, alternative="greater").pvalue)
        p_superiority_bound = float(stats.ttest_1samp(delta, margin, alternative="less").pvalue)
        ci_bootstrap = _bootstrap_ci(delta, 1 - alpha, int(n_bootstrap), seed, bootstrap_method)

    p_tost = max(p_noninferiority, p_superiority_bound)
    return PairedComparison(
        n=n,
        margin=margin,
        alpha=alpha,
        mean_candidate=float(np.mean(cand)),
        mean_baseline=float(np.mean(base)),
        mean_delta=mean_delta,
        sd_delta=sd_delta,
        ci_t=ci_t,
        ci_bootstrap=ci_bootstrap,
        ci_tost=ci_tost,
        p_difference=p_difference,
        p_tost=p_tost,
        p_noninferiority=p_noninferiority,
        equivalent=p_tost < alpha,
        non_inferior=p_noninferiority < alpha,
        degenerate=degenerate,
        bootstrap_method=bootstrap_method,
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
    )


def holm_correction(p_values: Mapping[K, float]) -> dict[K, float]:
    """Holm–Bonferroni adjusted p-values (step-down, made monotone), keyed like the input.

    With the raw p-values sorted ascending ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``. Rejecting where the adjusted p-value is below ``alpha`` controls
    the family-wise error rate at ``alpha``.
    """
    for key, p in p_values.items():
        if not (isinstance(p, numbers.Real) and 0.0 <= float(p) <= 1.0):
            raise ValueError(f"p-value for {key!r} must be a number in [0, 1], got {p!r}.")
    ordered = sorted(p_values.items(), key=lambda item: float(item[1]))
    m = len(ordered)
    adjusted: dict[K, float] = {}
    running_max = 0.0
    for rank, (key, p) in enumerate(ordered):
        running_max = max(running_max, min(1.0, (m - rank) * float(p)))
        adjusted[key] = running_max
    return {key: adjusted[key] for key in p_values}


def holm_adjust_comparisons(
    comparisons: Mapping[K, PairedComparison], alpha: float | None = None
) -> dict[K, HolmAdjustedComparison]:
    """Holm-correct the TOST and the non-inferiority p-values over a family of comparisons (e.g. benchmarks).

    The two claims are corrected separately, each over all the comparisons given. Use one call per
    (condition, metric) with the benchmarks as keys to correct "across benchmarks".

    Args:
        comparisons: The family, e.g. ``{"benchmark_a": cmp_a, "benchmark_b": cmp_b}``.
        alpha: Level for the adjusted flags; defaults to the comparisons' own (common) ``alpha``.
    """
    if not comparisons:
        return {}
    if alpha is None:
        alphas = {c.alpha for c in comparisons.values()}
        if len(alphas) != 1:
            raise ValueError(f"The comparisons use different alphas {sorted(alphas)}; pass `alpha` explicitly.")
        alpha = alphas.pop()
    p_tost = holm_correction({key: c.p_tost for key, c in comparisons.items()})
    p_ni = holm_correction({key: c.p_noninferiority for key, c in comparisons.items()})
    return {
        key: HolmAdjustedComparison(
            comparison=c,
            p_tost_adjusted=p_tost[key],
            p_noninferiority_adjusted=p_ni[key],
            equivalent=p_tost[key] < alpha,
            non_inferior=p_ni[key] < alpha,
        )
        for key, c in comparisons.items()
    }


def _split(results: Mapping[str, Any], attribute: str) -> tuple[list[str], list[str]]:
    yes = [name for name, r in results.items() if getattr(r, attribute)]
    no = [name for name, r in results.items() if not getattr(r, attribute)]
    return yes, no


def metric_disagreement(
    results: Mapping[str, PairedComparison | HolmAdjustedComparison], benchmark: str | None = None
) -> list[str]:
    """Human-readable flags where metrics of the same benchmark and condition disagree.

    Flags (1) equivalence, (2) non-inferiority decisions that differ between metrics (e.g. an LLM judge says
    equivalent but token F1 does not; a degenerate comparison, which decides nothing, is left out of both), and (3)
    opposite significant directions (one metric's ``1 - alpha`` t interval of Δ is entirely above 0 while another's
    is entirely below). Holm-adjusted results use their adjusted flags.

    Args:
        results: Metric name -> comparison for one benchmark and one condition.
        benchmark: Optional benchmark name used as a prefix of the messages.
    """
    prefix = f"{benchmark}: " if benchmark else ""
    messages = []
    raw = {name: r.comparison if isinstance(r, HolmAdjustedComparison) else r for name, r in results.items()}
    # A degenerate comparison (zero variance) makes no equivalence or non-inferiority claim, so it cannot disagree.
    decided = {name: r for name, r in results.items() if not raw[name].degenerate}
    for attribute, label in (("equivalent", "equivalent"), ("non_inferior", "non-inferior")):
        yes, no = _split(decided, attribute)
        if yes and no:
            messages.append(
                f"{prefix}metrics disagree on {label}: {label} by {', '.join(yes)}; not by {', '.join(no)}."
            )
    better = [name for name, c in raw.items() if c.ci_t[0] > 0]
    worse = [name for name, c in raw.items() if c.ci_t[1] < 0]
    if better and worse:
        messages.append(
            f"{prefix}metrics disagree on direction: candidate significantly better by {', '.join(better)}; "
            f"significantly worse by {', '.join(worse)}."
        )
    return messages
