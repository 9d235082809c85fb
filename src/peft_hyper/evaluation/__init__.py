"""Model-independent core of `frames2lora eval`: paired statistics, per-item metrics and report writing.

The claim under test: answers with the Frames2LoRA adapter only (no video in context) are non-inferior / equivalent
to answers with the video in context. See [`paired_comparison`] for the decision rule.
"""

from .metrics import JudgeFn, JudgeMetric, PerItemMetric, available_metrics, load_metric, per_item_scores
from .report import (
    BenchmarkResult,
    EvaluationResults,
    NotRun,
    ReportFiles,
    holm_adjust_results,
    load_results,
    plot_deltas,
    plot_frame_counts,
    render_markdown,
    write_report,
)
from .statistics import (
    HolmAdjustedComparison,
    PairedComparison,
    holm_adjust_comparisons,
    holm_correction,
    metric_disagreement,
    paired_comparison,
)

__all__ = [
    "BenchmarkResult",
    "EvaluationResults",
    "HolmAdjustedComparison",
    "JudgeFn",
    "JudgeMetric",
    "NotRun",
    "PairedComparison",
    "PerItemMetric",
    "ReportFiles",
    "available_metrics",
    "holm_adjust_comparisons",
    "holm_adjust_results",
    "holm_correction",
    "load_metric",
    "load_results",
    "metric_disagreement",
    "paired_comparison",
    "per_item_scores",
    "plot_deltas",
    "plot_frame_counts",
    "render_markdown",
    "write_report",
]
