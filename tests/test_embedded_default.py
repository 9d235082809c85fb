"""The embedded default: the shipped checkpoint (small, safetensors, loads with plain `AutoPeftModel`) answers
held-out synthetic-world questions from its generated adapter, `frames2lora demo` runs on it, and the base-VLM
training script works end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModel
from transformers import AutoProcessor, SmolVLMForConditionalGeneration

import peft_hyper
from peft_hyper.cli import default_model
from peft_hyper.cli import main as cli_main
from peft_hyper.evaluation.runner import evaluate_adapters, load_eval_items
from peft_hyper.inputs import build_video_inputs
from peft_hyper.testing import world as S
from peft_hyper.video import load_video

CHECKPOINT = Path(peft_hyper.__file__).parent / "checkpoints" / "frames2lora-synthetic"
SCRIPTS = Path(__file__).resolve().parents[1] / "examples" / "embedded_default"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shipped():
    return AutoPeftModel.from_pretrained(str(CHECKPOINT)).eval()


def test_shipped_checkpoint_is_small_self_contained_safetensors():
    files = [path for path in CHECKPOINT.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 30 * 2**20
    assert {path.suffix for path in files} <= {".json", ".safetensors", ".md", ".jinja"}
    assert {"adapter_model.safetensors", "README.md"} <= {path.name for path in files}
    assert (CHECKPOINT / "base" / "model.safetensors").is_file()
    config = json.loads((CHECKPOINT / "adapter_config.json").read_text())
    assert config["peft_type"] == "HYPERLORA"
    assert config["base_model_name_or_path"] == "peft_hyper://checkpoints/frames2lora-synthetic/base"
    assert default_model() == str(CHECKPOINT)


def test_adapter_answers_held_out_questions_far_above_the_controls(shipped):
    # Eight clips of the test split rendered in memory (the `spec` column), all of their questions.
    dataset = S.make_dataset(8, seed=0, split="test").filter(lambda row: row["task_type"] != "caption")
    items = load_eval_items(dataset)
    run = evaluate_adapters(
        shipped,
        items,
        metrics=["exact_match"],
        margin=0.1,
        controls=["no_video", "shuffled"],
        frames=[12],
        max_new_tokens=6,
        batch_size=16,
        progress=False,
        video_loader=S.render_spec_video,
    )

    def accuracy(condition: str) -> float:
        predictions = run.predictions[f"{condition}@12"]
        return sum(predictions[item.id] == item.references[0] for item in items) / len(items)

    in_context, adapter = accuracy("in_context"), accuracy("adapter")
    no_video, shuffled = accuracy("no_video"), accuracy("shuffled")
    assert len(items) >= 80
    # Measured on these clips from their mp4s (docs/embedded_default.md): in-context 0.71, adapter 0.54, no video
    # 0.15, another clip's adapter 0.24. An adapter that ignores its video sits at the controls' level.
    assert in_context >= 0.55 and adapter >= 0.4, (adapter, in_context)
    assert adapter - no_video >= 0.2 and adapter - shuffled >= 0.15, (adapter, no_video, shuffled)


def test_shipped_router_finds_the_segment_held_out_questions_name(shipped):
    """Held-out long-world questions (test split; videos the router was not trained on), no video needed: the router
    reads the questions alone. Measured at training (`router_training.json`): 1.000 at 192 frames, 0.95 at 1,024."""
    from peft_hyper.routing import choose_segments
    from peft_hyper.testing.long_world import long_questions, long_seed, sample_long_spec

    timed = untimed = hits = 0
    for index in range(4):
        spec = sample_long_spec(long_seed(99, "test", 192, index), 192)
        questions = long_questions(spec)
        times = torch.arange(192.0)
        probabilities = shipped.segment_probabilities([qa.question for qa in questions], times, times[::12])
        for qa, choice in zip(questions, choose_segments(probabilities), strict=True):
            if qa.cue_time is None:
                untimed += 1
                hits += choice is None
            else:
                timed += 1
                hits += choice == qa.cue_time // 12
    assert timed >= 40 and untimed >= 20
    assert hits / (timed + untimed) >= 0.9


def test_demo_command_answers_the_sample_clip_with_zero_visual_tokens(capsys):
    assert cli_main(["demo", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    truth = json.loads((Path(peft_hyper.__file__).parent / "samples" / "synthetic_clip.json").read_text())
    assert [row["question"] for row in output["answers"]] == [qa["question"] for qa in truth["questions"]]
    for row in output["answers"]:
        assert row["adapter"]["visual_tokens"] == 0 and row["no_video"]["visual_tokens"] == 0
        assert row["in_context"]["visual_tokens"] == 12 * 16
        assert row["truth"] and row["adapter"]["answer"]


def test_base_training_script_end_to_end(tiny_base_dir, tmp_path):
    script = _load_script("train_base_vlm")
    output = tmp_path / "base"
    argv = ["--output_dir", str(output), "--processor_dir", tiny_base_dir, "--device", "cpu", "--workers", "1"]
    argv += ["--image_size", "32", "--patch_size", "8", "--num_frames", "4", "--text_hidden", "32"]
    argv += ["--text_layers", "1", "--heads", "2", "--kv_heads", "1", "--intermediate", "64", "--vision_hidden", "16"]
    argv += ["--vision_layers", "1", "--vision_heads", "2", "--max_position_embeddings", "1024"]
    argv += ["--pool_clips", "6", "--eval_clips", "2", "--batch_size", "4", "--max_steps", "2", "--eval_every", "1"]
    report = script.main(argv)

    assert report["steps"] == 2 and len(report["history"]) == 2
    assert {"kind/attribute", "kind/motion", "kind/count", "kind/temporal", "caption"} <= set(report["history"][0])
    model = SmolVLMForConditionalGeneration.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert model.config.text_config.hidden_size == 32 and processor.image_seq_len == 4
    assert json.loads((output / "training_report.json").read_text())["stop_reason"] == "max_steps"

    # What training feeds the model is what inference builds from the mp4 of the same clip.
    spec = S.sample_spec(S.clip_seed(0, "test", 0))
    video = load_video(S.write_clip(spec, tmp_path / "clip.mp4", num_frames=4, size=32), num_frames=4)
    encoder = script.PromptEncoder(processor, S.render_clip(spec, 4, 32))
    for qa in S.questions(spec):
        inputs = build_video_inputs(processor, [video], qa.question, add_generation_prompt=True)
        assert inputs["input_ids"][0].tolist() == encoder.prompt(qa.question)
    rendered = S.render_clip(spec, 4, 32)[None].float()
    decoded = video.frames[None].float()
    simulated = script.simulate_h264(rendered)
    assert simulated.min() >= 0 and simulated.max() <= 255 and torch.equal(simulated, simulated.round())
    assert (simulated - decoded).abs().mean() < (rendered - decoded).abs().mean() + 2.0
