"""Report writing for `frames2lora eval`: markdown tables, ``results.json`` and plots from structured results.

Everything here is a pure function of an [`EvaluationResults`] (no model code). The structure is:

* per benchmark ([`BenchmarkResult`]), per condition (``"adapter"``, ``"no_video"``, ``"bias_only"``,
  ``"shuffled"``, ``"composed"``, ...) compared with the baseline condition (``"in_context"`` by default), per
  metric: a [`~peft_hyper.evaluation.statistics.PairedComparison`] (candidate = the condition, baseline = the
  reference), on the items both answered;
* optionally the same per number of video frames (``by_frame_count``), used for the score-vs-frames plot;
* the conditions that could not be run for some items ([`NotRun`]: the video in context beyond the base's maximum
  length), listed before the tables.

Equivalence / non-inferiority flags in the report are Holm-corrected across benchmarks, separately for each
(condition, metric) pair and separately for the TOST and the non-inferiority p-values (see
[`holm_adjust_results`]).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .statistics import HolmAdjustedComparison, PairedComparison, holm_adjust_comparisons, metric_disagreement

__all__ = [
    "BenchmarkResult",
    "EvaluationResults",
    "NotRun",
    "ReportFiles",
    "holm_adjust_results",
    "load_results",
    "plot_deltas",
    "plot_frame_counts",
    "render_markdown",
    "write_report",
]

SCHEMA_VERSION = 1

# condition -> metric -> comparison against the baseline
ConditionComparisons = dict[str, dict[str, PairedComparison]]
# benchmark -> condition -> metric -> Holm-adjusted comparison
AdjustedResults = dict[str, dict[str, dict[str, HolmAdjustedComparison]]]


@dataclass
class BenchmarkResult:
    """Results of one benchmark.

    Args:
        name: Benchmark name.
        comparisons: ``condition -> metric -> PairedComparison`` against the baseline, at the main frame count.
        by_frame_count: ``num_frames -> condition -> metric -> PairedComparison`` for a frame-count sweep (optional).
    """

    name: str
    comparisons: ConditionComparisons
    by_frame_count: dict[int, ConditionComparisons] = field(default_factory=dict)

    @property
    def conditions(self) -> list[str]:
        """Conditions in insertion order."""
        return list(self.comparisons)

    @property
    def metrics(self) -> list[str]:
        """Metrics in order of first appearance over the conditions."""
        return _unique(metric for by_metric in self.comparisons.values() for metric in by_metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (frame counts become string keys)."""
        return {
            "name": self.name,
            "comparisons": _comparisons_to_dict(self.comparisons),
            "by_frame_count": {str(k): _comparisons_to_dict(v) for k, v in sorted(self.by_frame_count.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkResult:
        """Inverse of [`to_dict`]; extra keys (e.g. the ``holm`` entries of ``results.json``) are ignored."""
        return cls(
            name=data["name"],
            comparisons=_comparisons_from_dict(data["comparisons"]),
            by_frame_count={int(k): _comparisons_from_dict(v) for k, v in data.get("by_frame_count", {}).items()},
        )


@dataclass(frozen=True)
class NotRun:
    """Items a condition was not run for at one frame count and size, and why.

    Args:
        condition: The condition (``"in_context"``: its prompt does not fit the base).
        frames: Number of video frames.
        size: Longest frame edge in px (``None``: as stored).
        items: How many items were not run.
        total: How many items the run had.
        reason: Why, in a few words.
    """

    condition: str
    frames: int
    size: int | None
    items: int
    total: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


@dataclass
class EvaluationResults:
    """All results of one `frames2lora eval` run.

    Args:
        benchmarks: One [`BenchmarkResult`] per benchmark (unique names).
        baseline: Name of the baseline condition every comparison is made against.
        metadata: Free-form, JSON-serialisable run information (model, adapter, date, ...), listed in the report.
        not_run: Conditions that were not run for some items ([`NotRun`]); comparisons with them use the other items.
    """

    benchmarks: list[BenchmarkResult]
    baseline: str = "in_context"
    metadata: dict[str, Any] = field(default_factory=dict)
    not_run: list[NotRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"Benchmark names must be unique, got {names}.")
        for benchmark in self.benchmarks:
            if self.baseline in benchmark.comparisons:
                raise ValueError(
                    f"Benchmark {benchmark.name!r} lists the baseline {self.baseline!r} as a condition; conditions "
                    "are compared against the baseline and must not include it."
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {
            "schema_version": SCHEMA_VERSION,
            "baseline": self.baseline,
            "metadata": self.metadata,
            "not_run": [record.to_dict() for record in self.not_run],
            "benchmarks": [b.to_dict() for b in self.benchmarks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResults:
        """Inverse of [`to_dict`]; also reads ``results.json`` as written by [`write_report`]."""
        return cls(
            benchmarks=[BenchmarkResult.from_dict(b) for b in data["benchmarks"]],
            baseline=data.get("baseline", "in_context"),
            metadata=dict(data.get("metadata", {})),
            not_run=[NotRun(**record) for record in data.get("not_run", [])],
        )


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by [`write_report`]."""

    markdown: Path
    json: Path
    plots: tuple[Path, ...]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _comparisons_to_dict(comparisons: ConditionComparisons) -> dict[str, dict[str, dict[str, Any]]]:
    return {cond: {metric: c.to_dict() for metric, c in by_metric.items()} for cond, by_metric in comparisons.items()}


def _comparisons_from_dict(data: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> ConditionComparisons:
    return {
        cond: {metric: PairedComparison.from_dict(c) for metric, c in by_metric.items()}
        for cond, by_metric in data.items()
    }


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "benchmark"


def holm_adjust_results(results: EvaluationResults) -> AdjustedResults:
    """Holm-adjust every comparison across benchmarks, per (condition, metric) and per claim (TOST / NI).

    Returns ``benchmark -> condition -> metric -> HolmAdjustedComparison``.
    """
    adjusted: AdjustedResults = {b.name: {c: {} for c in b.comparisons} for b in results.benchmarks}
    pairs = _unique(
        f"{c}\0{m}" for b in results.benchmarks for c, by_metric in b.comparisons.items() for m in by_metric
    )
    for pair in pairs:
        condition, metric = pair.split("\0")
        family = {
            b.name: b.comparisons[condition][metric]
            for b in results.benchmarks
            if metric in b.comparisons.get(condition, {})
        }
        for benchmark, value in holm_adjust_comparisons(family).items():
            adjusted[benchmark][condition][metric] = value
    return adjusted


def _fmt(value: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "nan"
    text = f"{value:.{digits}f}"
    return text[1:] if text == "-0." + "0" * digits else text


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _flag(flag: bool, p: float) -> str:
    return f"{'✓' if flag else '✗'} ({_fmt_p(p)})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _benchmark_section(
    benchmark: BenchmarkResult, adjusted: dict[str, dict[str, HolmAdjustedComparison]], baseline: str
) -> list[str]:
    conditions, metrics = benchmark.conditions, benchmark.metrics
    sizes = sorted({c.n for by_metric in benchmark.comparisons.values() for c in by_metric.values()})
    lines = [
        f"## {benchmark.name}",
        "",
        f"n = {', '.join(map(str, sizes))} items" + (" (differs by condition/metric)" if len(sizes) > 1 else ""),
        "",
    ]

    header = ["Metric", "Margin", baseline]
    for condition in conditions:
        header += [f"**{condition}**", "Δ [95% CI]", "Eq", "NI"]
    rows, notes = [], []
    for metric in metrics:
        present = [benchmark.comparisons[c][metric] for c in conditions if metric in benchmark.comparisons[c]]
        # Comparisons on fewer items (a condition not run for some, see "Not run") have their own baseline mean.
        full = max(c.n for c in present)
        baseline_means = {round(c.mean_baseline, 9) for c in present if c.n == full}
        if len(baseline_means) > 1:
            notes.append(f"- {metric}: the {baseline} mean differs between conditions (not the same items?).")
        reference = next(c for c in present if c.n == full)
        row = [metric, _fmt(reference.margin), _fmt(reference.mean_baseline)]
        for condition in conditions:
            comparison = benchmark.comparisons[condition].get(metric)
            if comparison is None:
                row += ["–"] * 4
                continue
            holm = adjusted[condition][metric]
            low, high = comparison.ci_t
            row += [_fmt(comparison.mean_candidate), f"{_fmt(comparison.mean_delta)} [{_fmt(low)}, {_fmt(high)}]"]
            if comparison.degenerate:  # zero variance: the t-tests have nothing to weigh (see statistics.py)
                row += ["degenerate"] * 2
                notes.append(
                    f"- {condition} / {metric}: degenerate — every item has Δ = {_fmt(comparison.mean_delta)} (zero "
                    "variance, e.g. both conditions score every item alike); the t-tests are undefined, so no Eq / NI "
                    "claim is made."
                )
            else:
                row += [
                    _flag(holm.equivalent, holm.p_tost_adjusted),
                    _flag(holm.non_inferior, holm.p_noninferiority_adjusted),
                ]
        rows.append(row)
    lines += _table(header, rows)

    disagreements = [
        message
        for condition in conditions
        for message in metric_disagreement(adjusted[condition], benchmark=f"{benchmark.name} / {condition}")
    ]
    if disagreements or notes:
        lines += ["", "**Flags**", ""]
        lines += [f"- {message}" for message in disagreements] + notes

    for metric in _unique(
        m for by_cond in benchmark.by_frame_count.values() for by_metric in by_cond.values() for m in by_metric
    ):
        frame_conditions = _unique(c for by_cond in benchmark.by_frame_count.values() for c in by_cond)
        header = ["Frames", baseline] + [f"{c} (Δ)" for c in frame_conditions]
        rows = []
        for frames, by_cond in sorted(benchmark.by_frame_count.items()):
            present = [by_cond[c][metric] for c in frame_conditions if metric in by_cond.get(c, {})]
            if not present:
                continue
            row = [str(frames), _fmt(present[0].mean_baseline)]
            for condition in frame_conditions:
                comparison = by_cond.get(condition, {}).get(metric)
                row.append(
                    "–" if comparison is None else f"{_fmt(comparison.mean_candidate)} ({_fmt(comparison.mean_delta)})"
                )
            rows.append(row)
        lines += ["", f"### {benchmark.name}: {metric} vs number of frames", ""] + _table(header, rows)
    return lines + [""]


def render_markdown(results: EvaluationResults, adjusted: AdjustedResults | None = None) -> str:
    """The markdown report: one paper-style table per benchmark, one column group per condition.

    Each group shows the condition's mean, its Δ to the baseline with the 95 % paired-t interval, and the
    Holm-adjusted equivalence (TOST) and non-inferiority decisions with their adjusted p-values.
    """
    adjusted = holm_adjust_results(results) if adjusted is None else adjusted
    alphas = sorted({c.alpha for b in results.benchmarks for m in b.comparisons.values() for c in m.values()})
    lines = [
        "# Frames2LoRA evaluation",
        "",
        f"Baseline: `{results.baseline}`. Δ = condition − {results.baseline}, per item; the 95 % CI is the paired t "
        "interval (bootstrap intervals are in `results.json`).",
        f"Eq: TOST equivalence within ±margin; NI: non-inferiority (H0: Δ ≤ −margin); α = {', '.join(map(str, alphas))}. "
        "Both are paired t-tests, Holm-corrected across benchmarks for each condition and metric; "
        "the adjusted p-value is in parentheses. `degenerate`: every item has the same Δ (zero variance), the t-tests "
        "are undefined and no claim is made (`degenerate` in `results.json`).",
        "",
    ]
    if results.metadata:
        lines += [f"- **{key}**: {value}" for key, value in results.metadata.items()] + [""]
    if results.not_run:
        lines += [
            "## Not run",
            "",
            "Items a condition could not be run for; every comparison with it uses the items where it ran (its n in "
            "the tables below).",
            "",
        ]
        lines += _table(
            ["Condition", "Frames", "Size", "Not run", "Why"],
            [
                [
                    record.condition,
                    str(record.frames),
                    f"{record.size} px" if record.size else "native",
                    f"{record.items} of {record.total}",
                    record.reason,
                ]
                for record in results.not_run
            ],
        )
        lines += [""]
    for benchmark in results.benchmarks:
        lines += _benchmark_section(benchmark, adjusted[benchmark.name], results.baseline)
    return "\n".join(lines)


def _new_figure(n_panels: int, title: str) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.5, 4.0 * n_panels), 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    figure.suptitle(title)
    return figure, list(axes)


def plot_deltas(benchmark: BenchmarkResult, path: str | Path, baseline: str = "in_context") -> Path:
    """Plot Δ per condition with its 95 % t interval (thick) and bootstrap interval (thin), one panel per metric."""
    metrics = benchmark.metrics
    figure, axes = _new_figure(len(metrics), f"{benchmark.name}: Δ vs {baseline}")
    for ax, metric in zip(axes, metrics, strict=True):
        conditions = [c for c in benchmark.conditions if metric in benchmark.comparisons[c]]
        comparisons = [benchmark.comparisons[c][metric] for c in conditions]
        margin = comparisons[0].margin
        ax.axhspan(-margin, margin, color="tab:green", alpha=0.12, label=f"±margin ({margin:g})")
        ax.axhline(0.0, color="black", linewidth=0.8)
        x = list(range(len(conditions)))
        for offset, attribute, width, label in (
            (-0.08, "ci_t", 2.5, "95% t CI"),
            (0.08, "ci_bootstrap", 1.0, "95% bootstrap CI"),
        ):
            means = [c.mean_delta for c in comparisons]
            lower = [c.mean_delta - getattr(c, attribute)[0] for c in comparisons]
            upper = [getattr(c, attribute)[1] - c.mean_delta for c in comparisons]
            ax.errorbar(
                [i + offset for i in x], means, yerr=[lower, upper], fmt="o", capsize=3, elinewidth=width, label=label
            )
        ax.set_xticks(x, conditions, rotation=20)
        ax.set_title(metric)
        ax.set_ylabel("Δ score")
    axes[0].legend(fontsize="small")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


def plot_frame_counts(benchmark: BenchmarkResult, path: str | Path, baseline: str = "in_context") -> Path:
    """Plot the mean score of each condition and of the baseline against the number of frames, one panel per metric."""
    if not benchmark.by_frame_count:
        raise ValueError(f"Benchmark {benchmark.name!r} has no `by_frame_count` results to plot.")
    sweep = dict(sorted(benchmark.by_frame_count.items()))
    metrics = _unique(m for by_cond in sweep.values() for by_metric in by_cond.values() for m in by_metric)
    conditions = _unique(c for by_cond in sweep.values() for c in by_cond)
    figure, axes = _new_figure(len(metrics), f"{benchmark.name}: score vs number of frames")
    for ax, metric in zip(axes, metrics, strict=True):
        base_x, base_y = [], []
        for frames, by_cond in sweep.items():
            present = [by_cond[c][metric] for c in conditions if metric in by_cond.get(c, {})]
            if present:
                base_x.append(frames)
                base_y.append(present[0].mean_baseline)
        ax.plot(base_x, base_y, "k--o", label=baseline)
        for condition in conditions:
            points = [
                (f, by_cond[condition][metric].mean_candidate)
                for f, by_cond in sweep.items()
                if metric in by_cond.get(condition, {})
            ]
            if points:
                ax.plot(*zip(*points, strict=True), "-o", label=condition)
        if min(sweep) > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(sweep), [str(f) for f in sweep])
        ax.set_xlabel("frames")
        ax.set_ylabel(f"mean {metric}")
        ax.set_title(metric)
    axes[0].legend(fontsize="small")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


def write_report(results: EvaluationResults, output_dir: str | Path) -> ReportFiles:
    """Write ``report.md``, ``results.json`` and the PNG plots to `output_dir` (created if needed).

    Plots: ``delta_<benchmark>.png`` for every benchmark, ``frames_<benchmark>.png`` for benchmarks with a
    frame-count sweep. ``results.json`` holds every comparison plus its Holm-adjusted values (under ``"holm"``) and
    the metric-disagreement flags; it can be read back with [`load_results`].
    """
    if not results.benchmarks:
        raise ValueError("No benchmark results to report.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    adjusted = holm_adjust_results(results)

    data = results.to_dict()
    for entry, benchmark in zip(data["benchmarks"], results.benchmarks, strict=True):
        for condition, by_metric in entry["comparisons"].items():
            for metric, comparison in by_metric.items():
                comparison["holm"] = adjusted[benchmark.name][condition][metric].to_dict()
        entry["disagreements"] = {
            condition: metric_disagreement(adjusted[benchmark.name][condition]) for condition in benchmark.conditions
        }
    json_path = output_dir / "results.json"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    markdown_path = output_dir / "report.md"
    markdown_path.write_text(render_markdown(results, adjusted), encoding="utf-8")

    plots, stems = [], set()
    for benchmark in results.benchmarks:
        stem = base = _safe_filename(benchmark.name)
        while stem in stems:
            stem = f"{base}_{len(stems)}"
        stems.add(stem)
        plots.append(plot_deltas(benchmark, output_dir / f"delta_{stem}.png", results.baseline))
        if benchmark.by_frame_count:
            plots.append(plot_frame_counts(benchmark, output_dir / f"frames_{stem}.png", results.baseline))
    return ReportFiles(markdown=markdown_path, json=json_path, plots=tuple(plots))


def load_results(path: str | Path) -> EvaluationResults:
    """Read a ``results.json`` written by [`write_report`] (e.g. to re-render the report)."""
    return EvaluationResults.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
