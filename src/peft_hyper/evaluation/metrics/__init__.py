"""Per-item text metrics for `frames2lora eval`, shipped as local `evaluate` metric modules.

Each sub-directory ``<name>/<name>.py`` is an `evaluate.Metric` that returns the mean score under ``<name>`` and the
per-item scores under ``"per_item"`` (the paired statistics need per-item scores). [`load_metric`] loads them from the
installed package with `evaluate.load(<local directory>)`, which never contacts the Hugging Face Hub.

An LLM judge (or any other scorer) plugs in as a plain callable ``judge(predictions, references, prompts)`` returning
one float per item; [`load_metric`] wraps it in a [`JudgeMetric`] that has the same ``name`` / ``compute`` interface
([`PerItemMetric`]) as the `evaluate` modules.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import evaluate

__all__ = [
    "PER_ITEM_KEY",
    "JudgeFn",
    "JudgeMetric",
    "PerItemMetric",
    "available_metrics",
    "load_metric",
    "normalize_answer",
    "per_item_scores",
    "TextPairMetric",
    "text_pair_features",
    "uniform_references",
]

PER_ITEM_KEY = "per_item"
"""Key of the per-item scores in the dict returned by every metric's ``compute``."""

_METRICS_DIR = Path(__file__).resolve().parent
_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, drop punctuation, drop articles (a/an/the), collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def uniform_references(references: Sequence[Any] | None) -> Sequence[Any] | None:
    """Wrap single references as one-element lists when a batch mixes single and multiple references.

    `evaluate` picks the input format from the *first* item of a batch and then casts the others to it, so a list of
    references after a plain string would silently become the string ``"['a', 'b']"``.
    """
    if references is None or all(isinstance(r, str) for r in references):
        return references
    return [[r] if isinstance(r, str) else r for r in references]


@runtime_checkable
class JudgeFn(Protocol):
    """A user scorer such as an LLM judge: one score per item, higher is better (e.g. 0/1 or in [0, 1])."""

    def __call__(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str] | None
    ) -> Sequence[float]: ...


@runtime_checkable
class PerItemMetric(Protocol):
    """What the evaluation loop needs from a metric; satisfied by our `evaluate` modules and by [`JudgeMetric`].

    ``compute`` returns ``{name: mean_score, "per_item": [score, ...]}``; `evaluate` modules ignore ``prompts``.
    """

    @property
    def name(self) -> str: ...

    def compute(self, *, predictions: Any, references: Any, **kwargs: Any) -> dict[str, Any] | None: ...


class JudgeMetric:
    """Wraps a [`JudgeFn`] into a [`PerItemMetric`].

    Args:
        judge: ``judge(predictions, references, prompts) -> list[float]``, one finite score per item.
        name: Name of the metric in results and reports.
    """

    def __init__(self, judge: JudgeFn, name: str = "judge") -> None:
        if not callable(judge):
            raise TypeError(f"`judge` must be callable as judge(predictions, references, prompts), got {judge!r}.")
        self.judge = judge
        self._name = name

    @property
    def name(self) -> str:
        """Name of the metric."""
        return self._name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, judge={self.judge!r})"

    def compute(
        self,
        *,
        predictions: Sequence[str],
        references: Sequence[Any],
        prompts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Score all items with the judge; returns ``{name: mean, "per_item": scores}``."""
        predictions, references = list(predictions), list(references)
        if len(predictions) != len(references) or (prompts is not None and len(prompts) != len(predictions)):
            raise ValueError(
                f"predictions ({len(predictions)}), references ({len(references)}) and prompts "
                f"({'None' if prompts is None else len(prompts)}) must have the same length."
            )
        if not predictions:
            raise ValueError("Nothing to score: `predictions` is empty.")
        scores = [float(s) for s in self.judge(predictions, references, None if prompts is None else list(prompts))]
        if len(scores) != len(predictions):
            raise ValueError(
                f"The judge returned {len(scores)} scores for {len(predictions)} items; return one per item."
            )
        if not all(math.isfinite(s) for s in scores):
            raise ValueError("The judge returned NaN or infinite scores; return a finite score for every item.")
        return {self._name: sum(scores) / len(scores), PER_ITEM_KEY: scores}


def text_pair_features() -> list[Any]:
    """`evaluate` input features shared by the shipped metrics: one prediction string and one or several reference
    strings per item."""
    import datasets

    return [
        datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        datasets.Features(
            {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        ),
    ]


class TextPairMetric:
    """Mixin for the shipped `evaluate.Metric` scripts: their `MetricInfo` and reference handling.

    Subclasses set `_DESCRIPTION`-style class attributes `description` and `inputs_description` and implement
    `_compute`. Not an `evaluate.Metric` itself, so `evaluate` never mistakes it for a script's metric class.
    """

    description: str = ""
    inputs_description: str = ""

    def _info(self) -> Any:
        import evaluate

        return evaluate.MetricInfo(
            description=self.description,
            citation="",
            inputs_description=self.inputs_description,
            features=text_pair_features(),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Like `evaluate.Metric.add_batch`; a batch mixing single and multiple references is made uniform."""
        return super().add_batch(predictions=predictions, references=uniform_references(references), **kwargs)


def available_metrics() -> list[str]:
    """Names of the metric modules shipped with the package."""
    return sorted(p.name for p in _METRICS_DIR.iterdir() if p.is_dir() and (p / f"{p.name}.py").is_file())


def load_metric(
    name: str | JudgeFn, *, judge_name: str = "judge", **load_kwargs: Any
) -> evaluate.EvaluationModule | JudgeMetric:
    """Load a shipped metric by name (offline), or wrap an LLM-judge callable.

    Args:
        name: One of [`available_metrics`] (``"exact_match"``, ``"rouge_l"``, ``"token_f1"``), or a [`JudgeFn`].
        judge_name: Name given to a wrapped judge callable.
        **load_kwargs: Passed to `evaluate.load` (``keep_in_memory=True`` by default, so no cache files are written).

    Returns:
        An `evaluate.EvaluationModule` (or a [`JudgeMetric`] for a callable); both satisfy [`PerItemMetric`].

    Raises:
        ValueError: For an unknown metric name; the message lists the available ones.
    """
    if not isinstance(name, str):
        if callable(name):
            return JudgeMetric(name, name=judge_name)
        raise TypeError(f"`name` must be a metric name or a judge callable, got {type(name).__name__}.")
    available = available_metrics()
    if name not in available:
        raise ValueError(
            f"Unknown metric {name!r}. Available metrics: {', '.join(available)}; or pass a callable "
            "judge(predictions, references, prompts) -> list[float] for an LLM judge."
        )
    import evaluate

    load_kwargs.setdefault("keep_in_memory", True)
    # A path to a directory holding `<dir name>.py` is loaded by `LocalEvaluationModuleFactory`: no Hub access.
    return evaluate.load(str(_METRICS_DIR / name), **load_kwargs)


def per_item_scores(result: dict[str, Any]) -> list[float]:
    """The per-item scores of a metric's ``compute`` result."""
    if PER_ITEM_KEY not in result:
        raise KeyError(f"Metric result has no {PER_ITEM_KEY!r} key (keys: {sorted(result)}); use a peft_hyper metric.")
    return [float(s) for s in result[PER_ITEM_KEY]]
