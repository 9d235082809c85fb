"""Exact match with SQuAD-style answer normalisation, returning per-item scores."""

import evaluate

from peft_hyper.evaluation.metrics import PER_ITEM_KEY, TextPairMetric, normalize_answer

_DESCRIPTION = """\
Exact match: 1.0 when the prediction equals the reference, else 0.0. By default both strings are normalised like the
SQuAD evaluation script (lowercase, punctuation and the articles a/an/the removed, whitespace collapsed). With several
references per item, the item scores 1.0 if any reference matches.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): Predicted answers.
    references (`list` of `str` or `list` of `list` of `str`): Reference answer(s) of each item.
    normalize (`bool`, defaults to `True`): Apply SQuAD normalisation before comparing.
    prompts (`list` of `str`, *optional*): Ignored; accepted so that all metrics share one call signature.

Returns:
    exact_match (`float`): Mean over items, in [0, 1].
    per_item (`list` of `float`): Score of each item (0.0 or 1.0).

Examples:
    >>> metric = load_metric("exact_match")
    >>> metric.compute(predictions=["The Cat!", "dog"], references=["cat", "a bird"])
    {'exact_match': 0.5, 'per_item': [1.0, 0.0]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(TextPairMetric, evaluate.Metric):
    """Per-item exact match."""

    description = _DESCRIPTION
    inputs_description = _KWARGS_DESCRIPTION

    def _compute(self, predictions, references, normalize=True, prompts=None):
        def prepare(text):
            return normalize_answer(text) if normalize else text

        scores = []
        for prediction, reference in zip(predictions, references, strict=True):
            candidates = [reference] if isinstance(reference, str) else list(reference)
            scores.append(float(any(prepare(prediction) == prepare(ref) for ref in candidates)))
        mean = sum(scores) / len(scores) if scores else float("nan")
        return {"exact_match": mean, PER_ITEM_KEY: scores}
