"""Corpus internalization: one PEFT LoRA directory per video and an index, batched, sharded, resumable after a kill,
with unreadable videos logged and skipped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peft_hyper.corpus
from peft_hyper.cli import main as cli_main
from peft_hyper.corpus import adapter_dir_name, internalize_dataset, process_device


@pytest.fixture
def manifest(tmp_path, clips) -> Path:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(Path(clips[0]).read_bytes()[:600])  # truncated
    rows = [{"id": f"clip/{i}", "video": clip} for i, clip in enumerate(clips)]
    rows += [{"id": "again", "video": clips[0]}, {"id": "broken", "video": "broken.mp4"}]  # a repeat, a relative path
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def index(out: Path) -> dict[str, dict]:
    return {e["id"]: e for e in map(json.loads, (out / "index.jsonl").read_text().splitlines())}


def test_one_adapter_directory_per_video_batched_and_an_index(hyper_model, clips, manifest, tmp_path):
    tuner = hyper_model.base_model
    forwards = []
    generate = tuner.generate_lora_factors
    tuner.generate_lora_factors = lambda inputs, *a, **k: (
        forwards.append(inputs["input_ids"].shape[0]) or generate(inputs, *a, **k)
    )
    result = internalize_dataset(hyper_model, manifest, tmp_path / "out", batch_size=2, progress=False)
    del tuner.generate_lora_factors
    assert sorted(result.written) == ["clip/0", "clip/1", "clip/2"] and list(result.failed) == ["broken"]
    assert forwards == [2, 1]  # the broken video leaves the second batch one short
    entries = index(tmp_path / "out")
    assert set(entries) == {"clip/0", "clip/1", "clip/2"}  # the repeated video is internalized once
    for i, clip in enumerate(clips):
        entry = entries[f"clip/{i}"]
        assert entry["frames"] == 4 and entry["seconds"] == pytest.approx(2.0) and entry["rank"] == 8
        saved = load_file(tmp_path / "out" / entry["dir"] / "adapter_model.safetensors")
        for key, value in hyper_model.generate_adapter(clip).items():
            torch.testing.assert_close(saved[key], value, rtol=1e-5, atol=1e-6)
    failed = [json.loads(line) for line in (tmp_path / "out" / "failed.jsonl").read_text().splitlines()]
    assert failed[0]["id"] == "broken" and "VideoDecodeError" in failed[0]["error"]


def test_a_rerun_after_a_kill_writes_only_what_is_missing(hyper_model, manifest, tmp_path):
    out = tmp_path / "out"
    internalize_dataset(hyper_model, manifest, out, progress=False)
    shard = next(out.glob("index-*-of-*.jsonl"))
    lines = shard.read_text().splitlines()
    shard.write_text(lines[0] + "\n" + lines[1][:10])  # the kill cut the last line: clip/1 and clip/2 not done
    killed = (  # a save of clip/2's directory killed half-way leaves its staging directory behind
        "import os, sys; from peft_hyper.saving import atomic_directory\n"
        "with atomic_directory(sys.argv[1]) as staging:\n"
        "    (staging / 'adapter_model.safetensors').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    target = out / "adapters" / adapter_dir_name("clip/2")
    subprocess.run([sys.executable, "-c", killed, str(target)], check=False)
    assert any(p.name.startswith(f".{target.name}.partial-") for p in target.parent.iterdir())
    result = internalize_dataset(hyper_model, manifest, out, progress=False)
    assert result.skipped == ["clip/0"] and sorted(result.written) == ["clip/1", "clip/2"]
    assert set(index(out)) == {"clip/0", "clip/1", "clip/2"}
    assert sorted(p.name for p in (out / "adapters").iterdir()) == sorted(
        adapter_dir_name(f"clip/{i}") for i in range(3)
    )


def test_shards_split_the_corpus_and_the_main_process_writes_the_index(hyper_model, manifest, tmp_path):
    out = tmp_path / "out"
    second = internalize_dataset(hyper_model, manifest, out, process_index=1, num_processes=2, progress=False)
    first = internalize_dataset(hyper_model, manifest, out, process_index=0, num_processes=2, progress=False)
    assert not set(first.written) & set(second.written)
    assert sorted(first.written + second.written) == ["clip/0", "clip/1", "clip/2"]
    assert first.index is not None and second.index is None and set(index(out)) == {"clip/0", "clip/1", "clip/2"}


def test_the_command_exits_nonzero_when_a_video_failed(manifest, tmp_path, capsys, monkeypatch):
    devices = []  # the command puts the model on the process's device (its GPU under accelerate launch)
    monkeypatch.setattr(peft_hyper.corpus, "process_device", lambda: devices.append("cpu") or torch.device("cpu"))
    assert cli_main(["internalize-dataset", str(manifest), "-o", str(tmp_path / "out"), "--frames", "4"]) == 1
    captured = capsys.readouterr()
    assert "3 written, 0 already done, 1 failed" in captured.out and "broken" in captured.err
    assert devices == ["cpu"] and str(process_device()) == "cpu"  # the real one, on this machine without a GPU
    assert cli_main(["internalize-dataset", str(tmp_path / "nothing.jsonl"), "-o", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_write_each_video_once(manifest, tmp_path):
    from test_trainer import _free_port

    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [*launcher, "-m", "peft_hyper.cli", "internalize-dataset", str(manifest), "-o", str(tmp_path / "out")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]  # the broken video
    assert set(index(tmp_path / "out")) == {"clip/0", "clip/1", "clip/2"}
    assert len(list((tmp_path / "out").glob("index-*-of-00002.jsonl"))) == 2  # each process its shard
    assert sorted(re.findall(r"^(\d) written", result.stdout, re.MULTILINE)) == ["1", "2"]  # nothing written twice
