"""The embedded default's hypernetwork script end to end on the tiny model: train a few steps, ship a self-contained
checkpoint (hypernetwork + processor + card + base/) that AutoPeftModel loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "embedded_default" / "train_hypernetwork.py"


def test_train_hypernetwork_ships_a_loadable_checkpoint(tiny_base_dir, clips, tmp_path):
    output = tmp_path / "ckpt"
    command = [
        sys.executable,
        str(SCRIPT),
        "--base",
        tiny_base_dir,
        "--output",
        str(output),
        "--workdir",
        str(tmp_path / "work"),
        "--train_clips",
        "4",
        "--max_steps",
        "2",
        "--batch_size",
        "2",
        "--size",
        "32",
        "--num_frames",
        "4",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "processor_config.json", "base"} <= {
        p.name for p in output.iterdir()
    }
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((output / "base").resolve())
    assert config["internalize_prompt"] == "Describe the video." and config["internalize_generation_prompt"] is True

    # continuing a checkpoint keeps its weights' shapes and takes this run's prompt
    continued = tmp_path / "continued"
    prompt = ["--internalize_prompt", "Internalize this video.", "--no-internalize_generation_prompt"]
    command[command.index("--output") + 1] = str(continued)
    command[command.index("--workdir") + 1] = str(tmp_path / "work2")
    command += ["--init_from", str(output), *prompt, "--task_weights", "motion=4,temporal=2", "--cue_questions", "0.5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    card = (continued / "README.md").read_text()
    assert "Loss weight per row (mean): attribute 1, caption 1, count 1, motion 4." in card  # (no temporal rows here)
    config = json.loads((continued / "adapter_config.json").read_text())
    assert (
        config["internalize_prompt"] == "Internalize this video." and config["internalize_generation_prompt"] is False
    )

    from peft import AutoPeftModel

    import peft_hyper  # noqa: F401

    model = AutoPeftModel.from_pretrained(output)
    assert len(model.generate_adapter(clips[0])) == 2 * len(model.base_model.hypernetwork.targets)


def test_train_hypernetwork_reference_architecture_shared_clips_and_time_budget(tiny_base_dir, tmp_path):
    """`--architecture frames2lora` sized by the heads options; `--video_dir` clips written once and reused by a second
    run; `--max_minutes` stops training on time (here after the first step)."""
    videos = tmp_path / "videos"
    common = [sys.executable, str(SCRIPT), "--base", tiny_base_dir, "--video_dir", str(videos), "--train_clips", "3"]
    common += ["--batch_size", "2", "--size", "32", "--num_frames", "4", "--objective", "ce"]
    first = subprocess.run(
        [*common, "--output", str(tmp_path / "a"), "--workdir", str(tmp_path / "wa"), "--max_steps", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    written = {p.name: p.stat().st_mtime_ns for p in videos.glob("*.mp4")}
    assert len(written) == 3 and not (tmp_path / "wa" / "train_videos").exists()

    reference = ["--architecture", "frames2lora", "--num_heads", "2", "--head_dim", "16", "--num_key_value_heads", "1"]
    output = tmp_path / "ref"
    result = subprocess.run(
        [*common, *reference, "--output", str(output), "--workdir", str(tmp_path / "wr")]
        + ["--max_steps", "50", "--max_minutes", "1e-6"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frames2lora: 1 of 50 steps" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in videos.glob("*.mp4")} == written  # reused, not rewritten
    config = json.loads((output / "adapter_config.json").read_text())
    assert (config["architecture"], config["num_heads"], config["head_dim"], config["num_key_value_heads"]) == (
        "frames2lora",
        2,
        16,
        1,
    )
    assert config["frame_sampling"] == "uniform" and config["position_encoding"] is False
