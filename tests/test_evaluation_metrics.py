"""Tests for the local `evaluate` metric modules in peft_hyper.evaluation.metrics."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools

from peft_hyper.evaluation import metrics as metrics_module
from peft_hyper.evaluation.metrics import (
    PER_ITEM_KEY,
    JudgeMetric,
    PerItemMetric,
    available_metrics,
    load_metric,
    normalize_answer,
    per_item_scores,
    uniform_references,
)

SRC = Path(metrics_module.__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Offline Hub settings, and any attempt to open a network connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert attempts == [], f"metric code tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def loaded():
    return {name: load_metric(name) for name in ("exact_match", "token_f1", "rouge_l")}


def test_available_metrics():
    assert available_metrics() == ["exact_match", "rouge_l", "token_f1"]


def test_unknown_metric_lists_available_names():
    with pytest.raises(ValueError, match="exact_match, rouge_l, token_f1"):
        load_metric("bleu")


def test_load_is_local_and_offline():
    import evaluate

    for name in available_metrics():
        metric = load_metric(name)  # under the `offline` guard (the module-scoped fixture is created before it)
        assert isinstance(metric, evaluate.Metric)
        assert isinstance(metric, PerItemMetric)
        assert metric.name == name
        assert metric.info.features is not None


@pytest.mark.slow
def test_cold_load_in_fresh_process(tmp_path):
    # A fresh process with an empty modules cache: `evaluate.load` copies the script there, still without network.
    # Slow (~10-20 s: the child imports torch through peft_hyper), so outside the default suite: pytest -m slow.
    script = """
import socket

def refuse(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket.connect = refuse
socket.create_connection = refuse
from peft_hyper.evaluation.metrics import available_metrics, load_metric

for name in available_metrics():
    result = load_metric(name).compute(predictions=["the cat"], references=["The cat."])
    assert result["per_item"] == [1.0], (name, result)
print("ok")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_MODULES_CACHE", None)
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok")
    assert (
        sorted(p.name for p in (tmp_path / "hf" / "modules" / "evaluate_modules" / "metrics").iterdir() if p.is_dir())
        == available_metrics()
    )


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat!", "cat"),
        ("  an   Apple, a pear and THE plum. ", "apple pear and plum"),
        ("theater", "theater"),
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match(loaded):
    result = loaded["exact_match"].compute(
        predictions=["The Cat!", "dog", "a red car", "Paris"],
        references=["cat", "a bird", "red car.", "paris, france"],
    )
    assert result["per_item"] == [1.0, 0.0, 1.0, 0.0]
    assert result["exact_match"] == pytest.approx(0.5)
    strict = loaded["exact_match"].compute(predictions=["The Cat!", "cat"], references=["cat", "cat"], normalize=False)
    assert strict["per_item"] == [0.0, 1.0]


def test_token_f1_hand_computed(loaded):
    result = loaded["token_f1"].compute(
        predictions=["the red car", "a big red dog barks", "nothing", "", "The."],
        references=["a red bus", "red dog", "something else", "", "an answer"],
    )
    # 1) {red, car} vs {red, bus}: P = R = 1/2 -> 0.5
    # 2) {big, red, dog, barks} vs {red, dog}: P = 2/4, R = 2/2 -> F1 = 2/3
    # 3) no overlap -> 0;  4) both empty -> 1;  5) prediction empty after normalisation -> 0
    assert result["per_item"] == pytest.approx([0.5, 2 / 3, 0.0, 1.0, 0.0])
    assert result["token_f1"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 5)


def test_token_f1_counts_repeated_tokens_once_per_occurrence(loaded):
    result = loaded["token_f1"].compute(predictions=["red red red"], references=["red"])
    # overlap = 1 token: P = 1/3, R = 1 -> 0.5
    assert result["per_item"] == pytest.approx([0.5])


def test_rouge_l_hand_computed(loaded):
    result = loaded["rouge_l"].compute(
        predictions=["the cat sat on the mat", "a b c d", "x y"], references=["the cat is on the mat", "a c", "z"]
    )
    # 1) LCS "the cat on the mat" = 5 of 6 tokens each way -> 5/6
    # 2) LCS "a c" = 2: P = 2/4, R = 2/2 -> 2/3;  3) no overlap -> 0
    assert result["per_item"] == pytest.approx([5 / 6, 2 / 3, 0.0])
    assert result["rouge_l"] == pytest.approx((5 / 6 + 2 / 3) / 3)


def test_rouge_l_stemmer(loaded):
    plain = loaded["rouge_l"].compute(predictions=["cats running"], references=["cat runs"])
    stemmed = loaded["rouge_l"].compute(predictions=["cats running"], references=["cat runs"], use_stemmer=True)
    assert plain["per_item"] == [0.0]
    assert stemmed["per_item"] == pytest.approx([1.0])


@pytest.mark.parametrize("name", ["exact_match", "token_f1", "rouge_l"])
def test_multiple_references_take_the_best(loaded, name):
    result = loaded[name].compute(predictions=["blue whale", "cat"], references=[["dog", "blue whale"], ["cat"]])
    assert result["per_item"] == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("name", ["exact_match", "token_f1", "rouge_l"])
def test_mixed_single_and_multiple_references(loaded, name):
    # evaluate infers the format from the first item; without `uniform_references` the list would become "['b', 'c']".
    result = loaded[name].compute(predictions=["a x", "b"], references=["a x", ["b", "c"]])
    assert result["per_item"] == pytest.approx([1.0, 1.0])


def test_uniform_references():
    assert uniform_references(None) is None
    assert uniform_references(["a", "b"]) == ["a", "b"]
    assert uniform_references(["a", ["b", "c"]]) == [["a"], ["b", "c"]]


@pytest.mark.parametrize("name", ["exact_match", "token_f1", "rouge_l"])
def test_prompts_are_accepted_and_ignored(loaded, name):
    with_prompts = loaded[name].compute(predictions=["a cat"], references=["cat"], prompts=["What animal?"])
    without = loaded[name].compute(predictions=["a cat"], references=["cat"])
    assert with_prompts == without
    assert per_item_scores(with_prompts) == with_prompts[PER_ITEM_KEY]


def test_judge_callable():
    seen = {}

    def judge(predictions, references, prompts):
        seen["prompts"] = prompts
        return [1.0 if p.lower() == r.lower() else 0.25 for p, r in zip(predictions, references, strict=True)]

    metric = load_metric(judge, judge_name="llm_judge")
    assert isinstance(metric, JudgeMetric)
    assert isinstance(metric, PerItemMetric)
    assert metric.name == "llm_judge"
    result = metric.compute(predictions=["Cat", "dog"], references=["cat", "bird"], prompts=["q1", "q2"])
    assert result == {"llm_judge": pytest.approx(0.625), "per_item": [1.0, 0.25]}
    assert seen["prompts"] == ["q1", "q2"]


def test_judge_validation():
    metric = JudgeMetric(lambda predictions, references, prompts: [1.0])
    with pytest.raises(ValueError, match="one per item"):
        metric.compute(predictions=["a", "b"], references=["a", "b"])
    with pytest.raises(ValueError, match="same length"):
        metric.compute(predictions=["a", "b"], references=["a"])
    with pytest.raises(ValueError, match="NaN"):
        JudgeMetric(lambda p, r, q: [float("nan")]).compute(predictions=["a"], references=["a"])
    with pytest.raises(TypeError):
        load_metric(3)


def test_per_item_scores_requires_key():
    with pytest.raises(KeyError, match="per_item"):
        per_item_scores({"accuracy": 1.0})


def test_metric_scripts_are_packaged():
    # setuptools' `packages.find` only ships directories with an `__init__.py`; the metric scripts must be inside one.
    packages = setuptools.find_packages(where=str(SRC))
    for name in available_metrics():
        assert f"peft_hyper.evaluation.metrics.{name}" in packages
