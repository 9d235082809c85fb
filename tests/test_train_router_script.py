"""`examples/long_video/train_router.py` end to end on the tiny model: a router is trained on questions alone and saved
beside the checkpoint's unchanged hypernetwork, and `--router_from` copies a trained router to another checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import small_config
from peft import AutoPeftModel, get_peft_model
from transformers import SmolVLMForConditionalGeneration

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "long_video" / "train_router.py"


def test_train_router_adds_a_router_and_keeps_the_hypernetwork(tiny_base_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir), small_config()).save_pretrained(
        checkpoint
    )
    output = tmp_path / "routed"
    small = ["--videos", "6", "--clips", "6", "--eval_videos", "1", "--frames", "48,96", "--eval_frames", "48"]
    command = [sys.executable, str(SCRIPT), "--model", str(checkpoint), "--output", str(output), "--steps", "20"]
    result = subprocess.run([*command, *small], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output / "adapter_config.json").read_text())["router_layer"] == 1
    assert json.loads((output / "router_training.json").read_text())["steps"] == 20

    before = AutoPeftModel.from_pretrained(checkpoint).base_model.hypernetwork.state_dict()
    routed = AutoPeftModel.from_pretrained(output).base_model
    after = routed.hypernetwork.state_dict()
    assert {k for k in after if not k.startswith("router.")} == set(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())

    copied = tmp_path / "copied"  # the same hypernetwork again, the router copied from `output` (same base)
    command = [sys.executable, str(SCRIPT), "--model", str(checkpoint), "--output", str(copied)]
    result = subprocess.run(
        [*command, "--router_from", str(output), *small], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    again = AutoPeftModel.from_pretrained(copied).base_model.router.state_dict()
    assert all(torch.equal(again[k], v) for k, v in routed.router.state_dict().items())
