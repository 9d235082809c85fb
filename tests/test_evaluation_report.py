"""Tests for peft_hyper.evaluation.report."""

import dataclasses
import json

import numpy as np
import pytest

from peft_hyper.evaluation.report import (
    BenchmarkResult,
    EvaluationResults,
    NotRun,
    holm_adjust_results,
    load_results,
    render_markdown,
    write_report,
)
from peft_hyper.evaluation.statistics import paired_comparison

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _comparison(seed: int, shift: float, baseline_seed: int = 0, n: int = 80):
    """Candidate = baseline + shift + noise; conditions of one benchmark share the baseline (same items)."""
    baseline = np.random.default_rng(baseline_seed).uniform(0.3, 0.9, n)
    noise = np.random.default_rng(seed).normal(0, 0.02, n)
    return paired_comparison(baseline + shift + noise, baseline, margin=0.05, n_bootstrap=200)


@pytest.fixture(scope="module")
def results() -> EvaluationResults:
    video_qa = BenchmarkResult(
        name="video_qa",
        comparisons={
            "adapter": {"exact_match": _comparison(0, 0.0), "token_f1": _comparison(1, -0.2)},
            "no_video": {"exact_match": _comparison(2, -0.3), "token_f1": _comparison(3, -0.3)},
        },
        by_frame_count={
            frames: {
                "adapter": {"exact_match": _comparison(10 + frames, -0.1 / frames, baseline_seed=frames)},
                "no_video": {"exact_match": _comparison(20 + frames, -0.3, baseline_seed=frames)},
            }
            for frames in (2, 4, 8)
        },
    )
    captions = BenchmarkResult(
        name="captions/long",
        comparisons={
            "adapter": {"exact_match": _comparison(4, 0.0)},
            "shuffled": {"exact_match": _comparison(5, -0.1)},
        },
    )
    return EvaluationResults(benchmarks=[video_qa, captions], metadata={"model": "tiny-test-model"})


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("report") / "out"
    return output_dir, write_report(results, output_dir)


def test_write_report_files(written):
    output_dir, files = written
    assert files.markdown == output_dir / "report.md"
    assert files.json == output_dir / "results.json"
    assert {p.name for p in files.plots} == {"delta_video_qa.png", "frames_video_qa.png", "delta_captions_long.png"}
    for path in files.plots:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    from PIL import Image

    with Image.open(files.plots[0]) as image:
        image.verify()


def test_markdown_table_rows(written):
    _, files = written
    report = files.markdown.read_text(encoding="utf-8")
    lines = report.splitlines()
    assert "## video_qa" in lines and "## captions/long" in lines
    assert (
        "| Metric | Margin | in_context | **adapter** | Δ [95% CI] | Eq | NI | **no_video** | Δ [95% CI] | Eq | NI |"
        in lines
    )

    em = _comparison(0, 0.0)
    row = next(line for line in lines if line.startswith("| exact_match | 0.050 |") and "video" not in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == f"{em.mean_baseline:.3f}"
    assert cells[3] == f"{em.mean_candidate:.3f}"
    assert cells[4] == f"{em.mean_delta:.3f} [{em.ci_t[0]:.3f}, {em.ci_t[1]:.3f}]".replace("-0.000", "0.000")
    assert cells[5].startswith("✓") and cells[6].startswith("✓")  # adapter equivalent and non-inferior
    assert cells[9].startswith("✗") and cells[10].startswith("✗")  # no_video neither

    f1_row = next(line for line in lines if line.startswith("| token_f1 |"))
    assert f1_row.count("✗") == 4
    # The adapter is equivalent by exact match but not by token F1: flagged.
    assert any("video_qa / adapter: metrics disagree on equivalent" in line for line in lines)
    assert "### video_qa: exact_match vs number of frames" in lines
    assert any(line.startswith("| 8 |") for line in lines)
    assert "- **model**: tiny-test-model" in lines
    assert "mean differs" not in report


def test_markdown_notes_different_baselines():
    benchmark = BenchmarkResult(
        "mixed",
        {
            "adapter": {"exact_match": _comparison(0, 0.0, baseline_seed=0)},
            "no_video": {"exact_match": _comparison(1, -0.3, baseline_seed=1)},
        },
    )
    report = render_markdown(EvaluationResults(benchmarks=[benchmark]))
    assert "- exact_match: the in_context mean differs between conditions (not the same items?)." in report


def test_results_json_round_trip(results, written):
    _, files = written
    data = json.loads(files.json.read_text(encoding="utf-8"))
    entry = data["benchmarks"][0]["comparisons"]["adapter"]["exact_match"]
    assert set(entry["holm"]) == {"p_tost_adjusted", "p_noninferiority_adjusted", "equivalent", "non_inferior"}
    assert data["benchmarks"][0]["by_frame_count"].keys() == {"2", "4", "8"}
    assert data["benchmarks"][0]["disagreements"]["adapter"]
    assert load_results(files.json) == results


def test_holm_is_applied_across_benchmarks(results):
    # Make the adapter's TOST p-values 0.03 and 0.04 on the two benchmarks: both pass raw, neither after Holm (0.06).
    video_qa, captions = results.benchmarks
    em = video_qa.comparisons["adapter"]["exact_match"]
    patched = EvaluationResults(
        benchmarks=[
            dataclasses.replace(
                video_qa,
                comparisons={"adapter": {"exact_match": dataclasses.replace(em, p_tost=0.03, equivalent=True)}},
            ),
            dataclasses.replace(
                captions,
                comparisons={"adapter": {"exact_match": dataclasses.replace(em, p_tost=0.04, equivalent=True)}},
            ),
        ]
    )
    adjusted = holm_adjust_results(patched)
    for name in ("video_qa", "captions/long"):
        holm = adjusted[name]["adapter"]["exact_match"]
        assert holm.p_tost_adjusted == pytest.approx(0.06)
        assert not holm.equivalent and holm.comparison.equivalent
    assert "✗ (0.060)" in render_markdown(patched)


def test_validation():
    comparison = _comparison(0, 0.0, n=10)
    with pytest.raises(ValueError, match="unique"):
        EvaluationResults(benchmarks=[BenchmarkResult("a", {}), BenchmarkResult("a", {})])
    with pytest.raises(ValueError, match="baseline"):
        EvaluationResults(benchmarks=[BenchmarkResult("a", {"in_context": {"exact_match": comparison}})])
    with pytest.raises(ValueError, match="No benchmark"):
        write_report(EvaluationResults(benchmarks=[]), "unused")


def test_degenerate_comparisons_are_marked_not_ticked(tmp_path):
    # A negative control that scores every item exactly like the baseline: Δ = 0 everywhere, zero variance. The
    # limit rule of statistics.py calls that "equivalent", but the report must not show it as a ✓.
    scores = np.random.default_rng(0).integers(0, 2, 40).astype(float)
    identical = paired_comparison(scores, scores, margin=0.05, n_bootstrap=200)
    assert identical.degenerate and identical.equivalent
    benchmark = BenchmarkResult(
        "qa", {"adapter": {"exact_match": _comparison(0, 0.0, n=40)}, "no_video": {"exact_match": identical}}
    )
    files = write_report(EvaluationResults(benchmarks=[benchmark]), tmp_path)
    report = files.markdown.read_text(encoding="utf-8")
    row = next(line for line in report.splitlines() if line.startswith("| exact_match |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[5].startswith("✓") and cells[6].startswith("✓")  # the adapter: a real, tested equivalence
    assert cells[9:11] == ["degenerate", "degenerate"]  # the control: no claim
    assert "- no_video / exact_match: degenerate — every item has Δ = 0.000" in report
    data = json.loads(files.json.read_text(encoding="utf-8"))
    assert data["benchmarks"][0]["comparisons"]["no_video"]["exact_match"]["degenerate"] is True


def test_conditions_not_run_are_listed_and_round_trip(tmp_path):
    """The video in context did not fit the base for some items: said before the tables, kept in results.json; a
    comparison on those fewer items has its own baseline mean without the 'not the same items?' note."""
    not_run = NotRun("in_context", 1024, None, 40, 80, "prompts of 29,765 tokens + 16 new tokens > 8,192 positions")
    benchmark = BenchmarkResult(
        "long",
        {
            "composed": {"exact_match": _comparison(0, 0.0)},
            "in_context": {"exact_match": _comparison(1, -0.2, baseline_seed=1, n=40)},
        },
    )
    results = EvaluationResults(benchmarks=[benchmark], baseline="adapter", not_run=[not_run])
    files = write_report(results, tmp_path)
    report = files.markdown.read_text(encoding="utf-8")
    assert "## Not run" in report
    assert (
        "| in_context | 1024 | native | 40 of 80 | prompts of 29,765 tokens + 16 new tokens > 8,192 positions |"
        in report
    )
    assert report.index("## Not run") < report.index("## long")
    assert "n = 40, 80 items (differs by condition/metric)" in report and "mean differs" not in report
    row = next(line for line in report.splitlines() if line.startswith("| exact_match |"))
    assert row.split("|")[3].strip() == f"{_comparison(0, 0.0).mean_baseline:.3f}"  # the reference on all items
    assert load_results(files.json) == results
    assert json.loads(files.json.read_text(encoding="utf-8"))["not_run"][0]["items"] == 40
