"""Smoke tests of the benchmark scripts in benchmarks/: each runs on the tiny SmolVLM with one repeat and writes JSON
with the expected fields. No timing assertions (timings are machine-dependent)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _restore_global_state():
    """The scripts set torch's thread count and transformers' verbosity; restore them for the rest of the session."""
    import torch
    import transformers

    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    yield
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity(verbosity)


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, argv: list[str], out: Path, monkeypatch) -> dict:
    module = _load(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv, "--out", str(out)])
    module.main()
    return json.loads(out.read_text())


COMMON = ["--arch", "tiny", "--repeats", "1", "--device", "cpu", "--threads", "1"]


def _check_machine(data: dict) -> None:
    for key in ("nproc", "cpu_model", "torch", "torch_threads", "device", "loadavg_start", "loadavg_end"):
        assert key in data["machine"], key


def test_ttft(tmp_path, monkeypatch):
    data = _run(
        "ttft",
        [*COMMON, "--frames", "2", "4", "--cheap-repeats", "1", "--max-video-frames", "tiny=2"],
        tmp_path / "ttft.json",
        monkeypatch,
    )
    _check_machine(data)
    assert data["benchmark"] == "ttft"
    points = {p["frames"]: p for p in data["points"]}
    assert set(points) == {2, 4}
    for key in ("visual_tokens", "prompt_tokens", "text_s", "adapter_s", "merged_s", "adapter_over_text"):
        assert points[2][key] is not None, key
    assert points[2]["video_median_s"] > 0 and points[2]["speedup_vs_adapter"] > 0
    assert points[4]["visual_tokens"] > points[2]["visual_tokens"]
    assert "video_skipped" in points[4] and points[4]["video_median_s"] is None
    shared = data["archs"][0]["shared"]
    assert shared["lora_layers"] > 0 and shared["lora_layers_before"] == 0

    plot = _load("plot_ttft")
    png = plot.plot([tmp_path / "ttft.json"], tmp_path / "ttft.png")
    assert png.stat().st_size > 1000


def test_internalize_cost(tmp_path, monkeypatch):
    data = _run("internalize_cost", [*COMMON, "--frames", "2"], tmp_path / "ic.json", monkeypatch)
    _check_machine(data)
    (point,) = data["points"]
    for stage in ("decode", "processor", "vision", "text", "hypernet", "export"):
        assert point[f"{stage}_s"] >= 0, stage
    for key in (
        "internalize_s",
        "forward_total_s",
        "body_total_s",
        "ratio_vs_forward",
        "ratio_vs_body",
        "hypernet_fraction",
        "peak_internalize_mib",
        "peak_forward_mib",
        "goal_1_15x_met",
    ):
        assert key in point, key
    total = sum(point[f"{s}_s"] for s in ("decode", "processor", "vision", "text", "hypernet", "export"))
    assert total == pytest.approx(point["internalize_s"], rel=1e-6)


def test_amortization(tmp_path, monkeypatch):
    data = _run("amortization", [*COMMON, "--frames", "2", "--questions", "2"], tmp_path / "am.json", monkeypatch)
    _check_machine(data)
    (point,) = data["points"]
    for key in (
        "video_prefix_median_s",
        "question_over_cache_median_s",
        "internalize_median_s",
        "adapter_query_median_s",
        "in_context_query_s",
        "break_even_vs_in_context",
        "break_even_vs_prefix_cache",
        "kv_cache_mib",
        "adapter_mib",
    ):
        assert key in point, key
    assert point["prefix_tokens"] < point["prompt_tokens"]
    assert [row["K"] for row in point["rows"]][:3] == [1, 2, 3]


def test_adapter_swap(tmp_path, monkeypatch):
    data = _run("adapter_swap", [*COMMON, "--resident", "2"], tmp_path / "sw.json", monkeypatch)
    _check_machine(data)
    (point,) = data["points"]
    ops = point["ops"]
    for key in ("set_adapter", "hotswap", "disk_hotswap", "new_name", "merged_switch"):
        assert ops[key]["ms"]["median"] > 0, key
    # Hotswap and set_adapter never re-inject; a new name adds a slot to every LoRA layer.
    for key in ("set_adapter", "hotswap", "disk_hotswap"):
        assert ops[key]["replaced_modules"] == 0 and ops[key]["new_slots"] == 0 and ops[key]["new_modules"] == 0
    assert ops["new_name"]["new_slots"] == point["lora_layers"]
    assert "goal_10ms_met" in point


def test_memory_vs_frames(tmp_path, monkeypatch):
    data = _run(
        "memory_vs_frames",
        [*COMMON, "--frames", "2", "--modes", "stream", "hidden_states", "--in-process", "--text-layers", "2"],
        tmp_path / "mem.json",
        monkeypatch,
    )
    _check_machine(data)
    modes = {p["mode"] for p in data["points"]}
    assert modes == {"stream", "hidden_states"}
    for point in data["points"]:
        assert point["peak_mib"] >= 0 and "vision" in point["phase_peak_mib"]
        assert point["text_layers"] == 2
    (row,) = data["rows"]
    assert "stream_mib" in row and "hidden_states_mib" in row


def test_train_step(tmp_path, monkeypatch):
    argv = [
        "--clips",
        "3",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch_size",
        "4",
        "--rows_per_video",
        "4",
        "--threads",
        "1",
    ]
    data = _run("train_step", argv, tmp_path / "train_step.json", monkeypatch)
    _check_machine(data)
    assert [row["rows_per_video"] for row in data["rows"]] == ["– (plain shuffling)", 4]
    for row in data["rows"]:
        assert row["s_per_step"] > 0 and row["rows_per_s"] == pytest.approx(4 / row["s_per_step"])
    assert data["rows"][0]["speedup"] == 1.0 and data["num_rows"] > 3 * 4


def test_corpus_throughput(tmp_path, monkeypatch):
    argv = [
        "--arch", "tiny", "--videos", "3", "--frames", "4", "--size", "32", "--batch-sizes", "1", "2",
        "--processes", "--repeats", "1", "--threads", "1",
    ]  # fmt: skip
    data = _run("corpus_throughput", argv, tmp_path / "corpus.json", monkeypatch)
    _check_machine(data)
    (arch,) = data["archs"]
    assert [(row["path"], row["batch_size"]) for row in arch["rows"]] == [("in-process", 1), ("in-process", 2)]
    for row in arch["rows"]:
        assert row["videos_per_s"] == pytest.approx(3 / row["seconds"]) and row["generate_s"] > 0
    assert arch["rows"][0]["speedup"] == 1.0
    sizes = arch["adapter_sizes"]
    # The adapters written are the size computed from the target shapes: the tensors plus the safetensors header.
    assert sizes["written_adapters"] == 3 and sizes["written_safetensors_bytes_mean"] == sizes["safetensors_bytes"]
    assert 0 < sizes["safetensors_bytes"] - sizes["adapter_tensor_bytes"] < 4096
    full = data["adapter_sizes_full_depth"]
    assert full["500M"]["adapter_tensor_bytes"] == 32 * 32 * (2560 + 960) * 4  # rank 32 on 32 down_proj, fp32
    assert full["500M"]["vllm_slot_bytes_all_linear"] > full["500M"]["vllm_slot_bytes_targets_only"]


@pytest.mark.slow
def test_corpus_throughput_with_two_processes(tmp_path, monkeypatch):
    argv = [
        "--arch", "tiny", "--videos", "4", "--frames", "4", "--size", "32", "--batch-sizes", "1",
        "--processes", "1", "2", "--repeats", "1", "--threads", "1",
    ]  # fmt: skip
    data = _run("corpus_throughput", argv, tmp_path / "corpus.json", monkeypatch)
    rows = {row["path"]: row for row in data["archs"][0]["rows"]}
    assert rows["command, 1 process"]["written_per_process"] == [4] and rows["command, 1 process"]["shards"] == 1
    assert rows["command, 2 processes"]["written_per_process"] == [2, 2]  # each video written once
    assert rows["command, 2 processes"]["shards"] == 2
    assert rows["command, 2 processes"]["wall_seconds"] > rows["command, 2 processes"]["seconds"] > 0


def test_compiled_latency(tiny_base_dir, tmp_path, monkeypatch):
    from conftest import small_config
    from peft import get_peft_model
    from transformers import SmolVLMForConditionalGeneration

    checkpoint = tmp_path / "frames2lora-tiny"
    get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir), small_config()).save_pretrained(
        checkpoint
    )
    argv = [
        "--model", str(checkpoint), "--backend", "eager", "--repeats", "1", "--swaps", "2", "--new-tokens", "1",
        "--frames", "4", "--size", "32", "--threads", "1",
    ]  # fmt: skip
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    data = _run("compiled_latency", argv, tmp_path / "compiled.json", monkeypatch)
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == cache  # the fresh compile cache was the script's alone
    _check_machine(data)
    assert [row["key"] for row in data["rows"]] == ["ttft", "answer", "mixed_ttft", "mixed_answer"]
    for row in data["rows"]:
        assert row["eager_ms"] > 0 and row["compiled_ms"] > 0 and row["after_swap_ms"] > 0
    assert data["recompiles"]["graphs_after_warmup"] >= 1
    assert data["recompiles"]["new_graphs_during_swaps"] == 0  # hot-swaps copy into the compiled graph's parameters
    assert data["eager_loop_matches_generate"] and data["compiled_matches_eager"]
    assert len(data["swaps"]) == 2


def test_serve_throughput_without_vllm(tmp_path, monkeypatch):
    """The peft-hyper conditions (the vLLM one needs `.venv-vllm` and runs in `tests/test_vllm_serving.py`'s way)."""
    conditions = ["mixed", "one_at_a_time", "in_context"]
    argv = ["--adapters", "2", "--questions", "2", "--max-new-tokens", "2", "--conditions", *conditions]
    data = _run("serve_throughput", [*COMMON, *argv], tmp_path / "serve.json", monkeypatch)
    _check_machine(data)
    assert data["answers"] == 4
    rows = {row["condition"]: row for row in data["results"]}
    assert set(rows) == set(conditions)
    assert all(row["answers_per_s"] > 0 for row in rows.values())
    assert rows["one_at_a_time"]["identical_to_mixed"] == 4 and rows["mixed"]["vs_mixed"] == 1.0
