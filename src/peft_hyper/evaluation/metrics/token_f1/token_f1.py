"""Token-level F1 with SQuAD-style answer normalisation, returning per-item scores."""

from collections import Counter

import evaluate

from peft_hyper.evaluation.metrics import PER_ITEM_KEY, TextPairMetric, normalize_answer

_DESCRIPTION = """\
Token F1 as in the SQuAD evaluation script: both strings are normalised (lowercase, punctuation and the articles
a/an/the removed, whitespace collapsed) and split on whitespace; F1 is the harmonic mean of the precision and recall
of the shared tokens (a multiset intersection). If either side has no tokens, the item scores 1.0 when both are empty
and 0.0 otherwise (SQuAD v2 convention). With several references per item, the best F1 is kept.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): Predicted answers.
    references (`list` of `str` or `list` of `list` of `str`): Reference answer(s) of each item.
    prompts (`list` of `str`, *optional*): Ignored; accepted so that all metrics share one call signature.

Returns:
    token_f1 (`float`): Mean over items, in [0, 1].
    per_item (`list` of `float`): F1 of each item.

Examples:
    >>> metric = load_metric("token_f1")
    >>> metric.compute(predictions=["the red car"], references=["a red bus"])
    {'token_f1': 0.5, 'per_item': [0.5]}
"""


def _f1(prediction, reference):
    prediction_tokens = normalize_answer(prediction).split()
    reference_tokens = normalize_answer(reference).split()
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)
    num_same = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokenF1(TextPairMetric, evaluate.Metric):
    """Per-item SQuAD token F1."""

    description = _DESCRIPTION
    inputs_description = _KWARGS_DESCRIPTION

    def _compute(self, predictions, references, prompts=None):
        scores = []
        for prediction, reference in zip(predictions, references, strict=True):
            candidates = [reference] if isinstance(reference, str) else list(reference)
            scores.append(max((_f1(prediction, ref) for ref in candidates), default=0.0))
        mean = sum(scores) / len(scores) if scores else float("nan")
        return {"token_f1": mean, PER_ITEM_KEY: scores}
