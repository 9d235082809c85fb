"""ROUGE-L F-measure (via the `rouge_score` package), returning per-item scores."""

import evaluate
from rouge_score import rouge_scorer

from peft_hyper.evaluation.metrics import PER_ITEM_KEY, TextPairMetric

_DESCRIPTION = """\
ROUGE-L: F-measure of the longest common subsequence of tokens, computed per item with Google's `rouge_score`
package. Its default tokenizer lowercases and keeps only ASCII letters and digits (other characters split tokens), so
text without any ASCII letters or digits scores 0.0. With several references per item, the best F-measure is kept.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): Predicted answers.
    references (`list` of `str` or `list` of `list` of `str`): Reference answer(s) of each item.
    use_stemmer (`bool`, defaults to `False`): Porter-stem tokens before matching.
    prompts (`list` of `str`, *optional*): Ignored; accepted so that all metrics share one call signature.

Returns:
    rouge_l (`float`): Mean over items, in [0, 1].
    per_item (`list` of `float`): ROUGE-L F-measure of each item.

Examples:
    >>> metric = load_metric("rouge_l")
    >>> metric.compute(predictions=["the cat sat on the mat"], references=["the cat is on the mat"])
    {'rouge_l': 0.8333333333333334, 'per_item': [0.8333333333333334]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(TextPairMetric, evaluate.Metric):
    """Per-item ROUGE-L F-measure."""

    description = _DESCRIPTION
    inputs_description = _KWARGS_DESCRIPTION

    def _compute(self, predictions, references, use_stemmer=False, prompts=None):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = []
        for prediction, reference in zip(predictions, references, strict=True):
            candidates = [reference] if isinstance(reference, str) else list(reference)
            scores.append(max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in candidates), default=0.0))
        mean = sum(scores) / len(scores) if scores else float("nan")
        return {"rouge_l": mean, PER_ITEM_KEY: scores}
