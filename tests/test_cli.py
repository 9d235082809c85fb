"""`frames2lora` user errors: one line `error: ...` on stderr and exit status 2, before any model is loaded where the
arguments alone show the mistake; real bugs keep their traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import pointing_at, small_config
from peft import AutoPeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import SmolVLMForConditionalGeneration

import peft_hyper
from peft_hyper import cli
from peft_hyper.model import HyperLoraModel


@pytest.fixture(scope="module")
def checkpoint(tiny_base_dir, tmp_path_factory) -> Path:
    vlm = SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir)
    path = tmp_path_factory.mktemp("ckpt") / "frames2lora-tiny"
    get_peft_model(vlm, small_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return AutoPeftModel.from_pretrained(checkpoint).eval()


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command gets as far as loading a model."""

    def refuse(model_id):
        raise AssertionError("the error must come before the model is loaded")

    monkeypatch.setattr(cli, "load_model", refuse)


@pytest.fixture
def tiny_model(monkeypatch, loaded):
    """Every command gets the tiny model (loaded once for the module)."""
    monkeypatch.setattr(cli, "load_model", lambda model_id: loaded)


@pytest.fixture
def manifest(tmp_path, clips) -> Path:
    path = tmp_path / "manifest.jsonl"
    rows = [{"id": str(i), "video_path": clip, "prompt": "what?", "target_text": "x"} for i, clip in enumerate(clips)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def user_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert the one-line user error and exit status 2; return the line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err  # may also hold the progress bars of a model that was loaded
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
    assert "Traceback" not in err
    return lines[-1]


def usage_error(capsys, argv: list[str]) -> str:
    """An argparse refusal: exit status 2 and the usage line; return the last (error) line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def lora_dir(path: Path, config: str | None = '{"peft_type": "LORA"}', weights: bytes | None = None) -> Path:
    """A directory shaped like `frames2lora internalize`'s output (config text and weight bytes as given)."""
    path.mkdir()
    if config is not None:
        (path / "adapter_config.json").write_text(config)
    save_file({"w": torch.zeros(64, 64)}, path / "adapter_model.safetensors")
    if weights is not None:
        (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --- output paths


def test_internalize_output_that_is_a_file_is_refused_before_loading(clips, tmp_path, capsys, no_model):
    existing = tmp_path / "adapter"
    existing.write_text("")
    assert "is an existing file" in user_error(capsys, ["internalize", clips[0], "-o", str(existing)])
    assert "is a file, not a directory" in user_error(capsys, ["internalize", clips[0], "-o", str(existing / "sub")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_internalize_into_a_read_only_directory_is_refused_before_loading(clips, tmp_path, capsys, no_model):
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    try:
        line = user_error(capsys, ["internalize", clips[0], "-o", str(read_only / "adapter")])
    finally:
        read_only.chmod(0o755)
    assert "cannot be written" in line


def test_a_failed_adapter_write_is_one_line(clips, tmp_path, capsys, tiny_model, monkeypatch):
    # What the up-front check cannot see (and what a chmod cannot show when the tests run as root).
    def denied(self, adapter_name, save_directory):
        raise PermissionError(13, "Permission denied", str(save_directory))

    monkeypatch.setattr(HyperLoraModel, "save_adapter", denied)
    line = user_error(capsys, ["internalize", clips[0], "-o", str(tmp_path / "adapter")])
    assert "cannot write the adapter" in line and "Permission denied" in line


def test_eval_out_that_is_a_file_is_refused_before_loading(manifest, tmp_path, capsys, no_model):
    existing = tmp_path / "report"
    existing.write_text("")
    line = user_error(capsys, ["eval", "--data", str(manifest), "--margin", "0.05", "--out", str(existing)])
    assert line.startswith("error: --out") and "is an existing file" in line


@pytest.fixture
def spec_dataset(tmp_path) -> Path:
    """Synthetic-world rows with a `spec` column and no video files."""
    from peft_hyper.testing.world import make_dataset

    path = tmp_path / "world"
    make_dataset(2, seed=0, split="test", questions_per_clip=1).save_to_disk(path)
    return path


def test_eval_of_spec_rows_without_a_video_loader_is_refused_before_loading(spec_dataset, tmp_path, capsys, no_model):
    line = user_error(capsys, ["eval", "--data", str(spec_dataset), "--margin", "0.05", "--out", str(tmp_path / "r")])
    assert "`spec` column" in line and "--video-loader peft_hyper.testing.world:render_spec_video" in line

    from peft_hyper.testing.long_world import make_long_dataset

    long = tmp_path / "long"
    make_long_dataset(1, seed=0, num_frames=24, split="test").save_to_disk(long)  # long-world specs: its own loader
    line = user_error(capsys, ["eval", "--data", str(long), "--margin", "0.05", "--out", str(tmp_path / "r")])
    assert "long-world" in line and "--video-loader peft_hyper.testing.long_world:render_long_spec_video" in line


def test_a_bad_video_loader_is_refused_before_loading(manifest, tmp_path, capsys, no_model):
    argv = ["eval", "--data", str(manifest), "--margin", "0.05", "--out", str(tmp_path / "r"), "--video-loader"]
    assert "cannot import module 'nowhere'" in user_error(capsys, [*argv, "nowhere:load"])
    assert "takes MODULE:FUNCTION" in user_error(capsys, [*argv, "render_spec_video"])


def test_eval_renders_spec_rows_with_the_world_video_loader(spec_dataset, tmp_path, capsys, tiny_model):
    out = tmp_path / "report"
    argv = ["eval", "--data", str(spec_dataset), "--margin", "0.1", "--frames", "2", "--controls", "no_video"]
    argv += [
        "--max-new-tokens",
        "1",
        "--out",
        str(out),
        "--video-loader",
        "peft_hyper.testing.world:render_spec_video",
    ]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["excluded"] == {} and set(results["predictions"]) == {"in_context@2", "adapter@2", "no_video@2"}


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--controls", "no_video,segments_shuffled"],
            "['segments_shuffled'] recombine each video's segment adapters",
        ),
        (["--controls", "one_segment"], "pass segment_frames (--segment-frames N)"),
        (["--max-rank", "64"], "max_rank (--max-rank) caps the rank of composed adapters"),
        (["--reference", "composed"], "'composed' needs segment_frames (--segment-frames N)"),
    ],
)
def test_eval_segment_options_without_segment_frames_are_refused_before_loading(
    manifest, tmp_path, capsys, no_model, options, message
):
    argv = ["eval", "--data", str(manifest), "--margin", "0.05", "--out", str(tmp_path / "r"), *options]
    assert message in user_error(capsys, argv)


def test_eval_with_segment_frames_adds_the_composed_conditions(manifest, tmp_path, capsys, tiny_model):
    out = tmp_path / "report"
    argv = ["eval", "--data", str(manifest), "--margin", "0.1", "--frames", "4", "--segment-frames", "2"]
    argv += ["--max-rank", "10", "--controls", "one_segment", "--reference", "adapter", "--max-new-tokens", "1"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["predictions"]) == {"adapter@4", "in_context@4", "composed@4", "one_segment@4"}
    assert results["baseline"] == "adapter"
    assert results["metadata"]["segment_frames"] == 2 and results["metadata"]["max_rank"] == 10
    assert set(results["benchmarks"][0]["comparisons"]) == {"in_context", "composed", "one_segment"}


def test_eval_says_where_the_video_in_context_does_not_fit(manifest, tmp_path, capsys, tiny_model, loaded):
    text_config = loaded.base_model.model.config.get_text_config()
    limit = text_config.max_position_embeddings
    text_config.max_position_embeddings = 64  # shorter than any prompt with 2 frames in context
    try:
        argv = ["eval", "--data", str(manifest), "--margin", "0.1", "--frames", "2", "--controls", "no_video"]
        argv += ["--max-new-tokens", "1", "--out", str(tmp_path / "report")]
        line = user_error(capsys, argv)
        assert "3 of 3 items do not fit the base at 2 frames" in line and "--reference adapter" in line
        assert cli.main([*argv, "--reference", "adapter"]) == 0
    finally:
        text_config.max_position_embeddings = limit
    captured = capsys.readouterr()
    assert "in_context not run for 3 of 3 item(s) at 2 frames" in captured.err
    assert "## Not run" in captured.out and "+ 1 new tokens > the base's 64 positions" in captured.out


# --- checkpoints and adapter directories


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: truncated(lora_dir(d) / "adapter_model.safetensors"), "truncated or corrupt"),
        (lambda d: lora_dir(d, config=None), "has no adapter_config.json"),
        (lambda d: lora_dir(d, config='{"peft_type": "LO'), "not a JSON object"),
        (lambda d: d.mkdir(), "without adapter_model.safetensors"),
        (lambda d: lora_dir(d, config='{"peft_type": "HYPERLORA"}'), "is a Frames2LoRA checkpoint"),
    ],
    ids=["truncated-weights", "missing-config", "garbled-config", "no-weights", "a-checkpoint"],
)
def test_ask_refuses_a_broken_adapter_dir(tmp_path, capsys, tiny_model, make, message):
    make(tmp_path / "adapter")
    assert message in user_error(capsys, ["ask", str(tmp_path / "adapter"), "what moves?"])


def test_ask_compare_needs_a_video(tmp_path, capsys, tiny_model):
    line = user_error(capsys, ["ask", str(lora_dir(tmp_path / "adapter")), "what moves?", "--compare"])
    assert "--compare needs a video" in line


@pytest.mark.parametrize("part", ["adapter_model.safetensors", "base"])
def test_model_with_truncated_weights(checkpoint, tiny_base_dir, clips, tmp_path, capsys, part):
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    if part == "base":  # the checkpoint's own file is whole; its base model's is not
        base = Path(shutil.copytree(tiny_base_dir, tmp_path / "base"))
        truncated(base / "model.safetensors")
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    else:
        truncated(copy / part)
    line = user_error(capsys, ["--model", str(copy), "ask", clips[0], "what moves?"])
    assert "cannot be read" in line and "truncated or corrupt" in line


def test_model_checkpoint_without_weights(checkpoint, clips, tmp_path, capsys):
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    (copy / "adapter_model.safetensors").unlink()  # PEFT would then look for "<dir>" on the Hub
    line = user_error(capsys, ["--model", str(copy), "ask", clips[0], "what moves?"])
    assert "has no adapter_model.safetensors" in line


def test_model_whose_base_is_missing(checkpoint, clips, tmp_path, capsys):
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    config = json.loads((copy / "adapter_config.json").read_text())
    gone = str(tmp_path / "moved-away")
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": gone}))
    line = user_error(capsys, ["--model", str(copy), "ask", clips[0], "what moves?"])
    assert f"or its base model '{gone}' cannot be loaded" in line


def test_model_given_a_plain_lora_adapter(clips, tmp_path, capsys):
    adapter = lora_dir(tmp_path / "adapter")
    line = user_error(capsys, ["--model", str(adapter), "ask", clips[0], "what moves?"])
    assert "plain LoRA adapter" in line and f"frames2lora ask {adapter}" in line


@pytest.mark.parametrize(
    "model, message",
    [
        ("./no-such-checkpoint", "no checkpoint directory at"),
        ("a/b/c", "no checkpoint directory at"),
        ("{file}", "is a file"),
        ("{garbled}", "not a JSON object"),
        ("someone/no-such-checkpoint", "no adapter_config.json could be fetched from a Hub repository"),  # offline
    ],
)
def test_model_that_is_not_a_checkpoint(clips, tmp_path, capsys, model, message):
    (tmp_path / "file").write_text("")
    lora_dir(tmp_path / "garbled", config="{")
    model = model.format(file=tmp_path / "file", garbled=tmp_path / "garbled")
    assert message in user_error(capsys, ["--model", model, "ask", clips[0], "what moves?"])


def test_no_model_and_no_embedded_default(clips, capsys, monkeypatch):
    monkeypatch.setattr(cli, "default_model", lambda: None)
    assert "no --model given" in user_error(capsys, ["ask", clips[0], "what moves?"])


# --- numbers, validated by argparse before any model is loaded


@pytest.mark.parametrize(
    "argv, option",
    [
        (["eval", "--sizes", "0"], "--sizes"),
        (["eval", "--sizes", "native,-224"], "--sizes"),
        (["eval", "--sizes", "big"], "--sizes"),
        (["eval", "--batch-size", "0"], "--batch-size"),
        (["eval", "--frames", "0"], "--frames"),
        (["eval", "--frames", "12,-4"], "--frames"),
        (["eval", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["eval", "--limit", "0"], "--limit"),
        (["eval", "--limit", "-3"], "--limit"),
        (["eval", "--margin", "inf"], "--margin"),
        (["eval", "--margin", "nan"], "--margin"),
        (["eval", "--margin", "0"], "--margin"),
        (["eval", "--margin", "-0.05"], "--margin"),
        (["eval", "--metrics", "exact_match,bleu9000"], "--metrics"),
        (["eval", "--controls", "no_video,nothing"], "--controls"),
        (["eval", "--controls", "one_segment,segments"], "--controls"),
        (["eval", "--segment-frames", "0"], "--segment-frames"),
        (["eval", "--segment-frames", "12", "--max-rank", "-8"], "--max-rank"),
        (["eval", "--reference", "no_video"], "--reference"),
        (["ask", "VIDEO", "q", "--frames", "0"], "--frames"),
        (["ask", "VIDEO", "q", "--frames", "-2"], "--frames"),
        (["ask", "VIDEO", "q", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["internalize", "VIDEO", "-o", "OUT", "--frames", "0"], "--frames"),
    ],
)
def test_out_of_range_numbers_are_refused_by_the_parser(capsys, no_model, argv, option):
    if argv[0] == "eval":  # a valid command line, then the bad value (the last occurrence of an option counts)
        argv = ["eval", "--data", "m.jsonl", "--out", "OUT", "--margin", "0.05", *argv[1:]]
    line = usage_error(capsys, argv)
    assert line.startswith(f"frames2lora {argv[0]}: error: argument {option}")


# --- evaluation data


@pytest.mark.parametrize(
    "data, message",
    [
        ("notes.txt", "neither a JSONL manifest nor a saved dataset"),
        ("folder", "not a dataset saved with `save_to_disk`"),
        ("missing.jsonl", "No file or directory at"),
        ("./missing", "No file or directory at"),
        ("some/where/data", "No file or directory at"),
    ],
)
def test_eval_data_that_is_not_accepted_fails_at_once(local_eval_paths, capsys, no_model, data, message):
    argv = ["eval", "--data", data, "--margin", "0.05", "--out", "report"]
    line = user_error(capsys, argv)
    assert message in line and "JSONL manifest (.jsonl/.json)" in line


# --- the boundary between user errors and bugs


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch, clips):
    def bug(model_id):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(cli, "load_model", bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["ask", clips[0], "what moves?"])


def test_console_entry_point_exits_2_with_one_line(clips, tmp_path):
    existing = tmp_path / "adapter"
    existing.write_text("")
    src = str(Path(peft_hyper.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    script = (
        "import sys; from importlib.metadata import entry_points; "
        "(entry,) = entry_points(group='console_scripts', name='frames2lora'); sys.exit(entry.load()())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "internalize", clips[0], "-o", str(existing)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: -o/--output") and result.stderr.count("\n") == 1, result.stderr


def test_ask_with_segments_routes_each_question_to_the_segment_it_names(tiny_base_dir, tmp_path, capsys, monkeypatch):
    from peft_hyper.testing.videos import make_test_frames, write_video

    vlm = SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir)
    model = get_peft_model(vlm, small_config(router_layer=1)).eval()
    pointing_at(model.base_model.router, 7.0)
    monkeypatch.setattr(cli, "load_model", lambda model_id: model)
    video = write_video(make_test_frames(40, 48, 64, seed=7), tmp_path / "long.mp4", fps=4)  # 10 s: 1 fps → 10 frames
    argv = ["ask", str(video), "what is at 00:07?", "what colour?", "--segment-frames", "3", "--json"]
    assert cli.main([*argv, "--max-new-tokens", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)["answers"]
    assert [row["adapter"]["routed_to"] for row in rows] == ["video-segment2", "video-segment2"]
    pointing_at(model.base_model.router, None)
    assert cli.main(["ask", str(video), "how many?", "--segment-frames", "3", "--max-new-tokens", "2"]) == 0
    assert "[video]" in capsys.readouterr().out  # names no time: the whole composition answers
