"""`frames2lora eval` end to end on the tiny model, plus the `ask` and `internalize` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_config
from peft import get_peft_model
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import HyperLoraModel
from peft_hyper.cli import main as cli_main
from peft_hyper.errors import EvalDataError, EvalDataNotFoundError, OutputPathError, UsageError
from peft_hyper.evaluation import runner
from peft_hyper.evaluation.runner import EvalItem, evaluate_adapters, load_eval_items


@pytest.fixture(scope="module")
def checkpoint(tiny_base_dir, tmp_path_factory) -> str:
    vlm = SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir)
    model = get_peft_model(vlm, small_config())
    path = tmp_path_factory.mktemp("ckpt") / "frames2lora-tiny"
    model.save_pretrained(path)
    return str(path)


@pytest.fixture
def manifest(tmp_path, clips) -> Path:
    lines = []
    for index, clip in enumerate(clips):
        for question, answer in (("what colour is the square?", "red"), ("which way does it move?", "left")):
            lines.append(
                {
                    "id": f"{index}-{len(lines)}",
                    "video_path": clip,
                    "prompt": question,
                    "task_type": "attribute" if "colour" in question else "motion",
                    "target_text": answer,
                }
            )
    lines.append(
        {
            "id": "gone",
            "video_path": str(tmp_path / "missing.mp4"),
            "prompt": "what?",
            "task_type": "attribute",
            "target_text": "x",
        }
    )
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_eval_command_writes_a_report_and_caches_predictions(checkpoint, manifest, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    argv = [
        "--model",
        checkpoint,
        "eval",
        "--data",
        str(manifest),
        "--metrics",
        "exact_match,token_f1",
        "--margin",
        "0.05",
        "--frames",
        "2,4",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "4",
        "--out",
        str(out),
    ]
    assert cli_main(argv) == 0
    report = (out / "report.md").read_text()
    assert "in_context" in report or "adapter" in report
    results = json.loads((out / "results.json").read_text())
    assert {"gone"} == set(results["excluded"])  # the missing video is out of every condition
    assert set(results["predictions"]) == {
        "in_context@2",
        "adapter@2",
        "no_video@2",
        "bias_only@2",
        "shuffled@2",
        "in_context@4",
        "adapter@4",
    }
    assert all(len(rows) == 6 for rows in results["predictions"].values())
    names = {b["name"] for b in results["benchmarks"]}
    assert names == {"all", "attribute", "motion"}
    assert any(p.name.startswith("delta_") for p in out.glob("*.png"))
    assert any(p.name.startswith("frames_") for p in out.glob("*.png"))

    def fail(*args, **kwargs):
        raise AssertionError("a rerun with cached predictions must not generate")

    monkeypatch.setattr(HyperLoraModel, "answer", fail)
    argv[argv.index("exact_match,token_f1")] = "rouge_l"
    assert cli_main(argv) == 0
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["predictions"] == results["predictions"]


def test_each_distinct_video_is_checked_once(clips, tmp_path, monkeypatch):
    checked: list[str] = []
    load_video = runner.load_video
    monkeypatch.setattr(runner, "load_video", lambda src, **kw: checked.append(str(src)) or load_video(src, **kw))
    missing = str(tmp_path / "missing.mp4")
    items = [
        runner.EvalItem(id=f"{name}-{q}", video=video, prompt="what?", references=["x"])
        for q in range(3)
        for name, video in (("a", clips[0]), ("gone", missing), ("b", clips[1]))
    ]
    videos, excluded = runner._load_videos(items)
    assert sorted(checked) == sorted([str(clips[0]), missing, str(clips[1])])
    assert set(videos) == {f"{name}-{q}" for q in range(3) for name in "ab"}
    assert set(excluded) == {f"gone-{q}" for q in range(3)} and len(set(excluded.values())) == 1


def test_spec_rows_are_read_by_the_video_loader_at_every_frame_count_and_size(checkpoint):
    from peft import AutoPeftModel

    from peft_hyper.testing.world import make_dataset, render_spec_video

    items = load_eval_items(make_dataset(2, seed=0, split="test", questions_per_clip=1))
    assert all(item.spec for item in items)
    with pytest.raises(UsageError, match="--video-loader peft_hyper.testing.world:render_spec_video"):
        evaluate_adapters(None, items, margin=0.1)  # refused before the model is touched

    calls = []

    def loader(source, num_frames, size):
        calls.append((source, num_frames, size))
        return render_spec_video(source, num_frames, size)

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    kwargs = dict(metrics=["exact_match"], controls=["no_video"], max_new_tokens=1, progress=False)
    run = evaluate_adapters(model, items, margin=0.1, frames=[2, 3], sizes=[None, 32], video_loader=loader, **kwargs)
    assert run.excluded == {} and len(run.predictions) == 9
    assert {source for source, _, _ in calls} == {item.spec for item in items}
    assert {(frames, size) for _, frames, size in calls} == {(1, None), (2, None), (2, 32), (3, None), (3, 32)}


def test_a_loader_that_cannot_read_the_sources_is_a_usage_error_not_an_exclusion(clips):
    from peft_hyper.testing.world import render_spec_video

    items = [runner.EvalItem(id=str(i), video=clip, prompt="what?", references=["x"]) for i, clip in enumerate(clips)]
    with pytest.raises(UsageError, match="renders synthetic-world specs"):
        runner._load_videos(items, render_spec_video)


@pytest.mark.parametrize(
    "name, message",
    [
        ("render_spec_video", "takes MODULE:FUNCTION"),
        (":render_spec_video", "takes MODULE:FUNCTION"),
        ("peft_hyper.no_such_module:load", "cannot import module 'peft_hyper.no_such_module'"),
        ("peft_hyper.testing.world:no_such_loader", "no callable 'no_such_loader'"),
        ("peft_hyper.testing.world:COLOURS", "no callable 'COLOURS'"),
    ],
)
def test_video_loader_names(name, message):
    from peft_hyper.testing.world import render_spec_video

    assert runner.import_video_loader("peft_hyper.testing.world:render_spec_video") is render_spec_video
    with pytest.raises(UsageError, match=message):
        runner.import_video_loader(name)


def test_shuffled_control_uses_another_video(checkpoint, clips, tiny_base_dir):
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint)
    items = [runner.EvalItem(id=str(i), video=clip, prompt="what?", references=["x"]) for i, clip in enumerate(clips)]
    donors = runner._derangement([item.id for item in items], {item.id: item.video for item in items}, seed=0)
    assert all(donor != item for item, donor in donors.items())
    run = evaluate_adapters(
        model,
        items,
        metrics=["exact_match"],
        margin=0.1,
        controls=["shuffled"],
        frames=[2],
        sizes=[None, 24],
        max_new_tokens=2,
        progress=False,
    )
    assert set(run.predictions) == {"in_context@2", "adapter@2", "shuffled@2", "in_context@2@24px", "adapter@2@24px"}
    assert set(run.results.benchmarks[0].comparisons) == {"adapter", "shuffled", "adapter@24px"}


def test_questions_about_one_clip_share_one_generated_adapter(checkpoint, clips):
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    tuner = model.base_model
    prompts = ["what colour is it?", "which way does it move?", "how many?"]
    items = [
        runner.EvalItem(id=f"{c}-{q}", video=clip, prompt=prompt, references=["x"])
        for c, clip in enumerate(clips[:2])
        for q, prompt in enumerate(prompts)
    ]
    generated = []
    original = tuner.generate_adapter

    def counting(videos, *args, **kwargs):
        generated.append(len(videos))
        return original(videos, *args, **kwargs)

    tuner.generate_adapter = counting
    cache = runner._PredictionCache(None, "m")
    videos = {i.id: i.video for i in items}
    shared = runner._predict(model, items, videos, runner.load_eval_video, "adapter", 2, None, cache, 3, 6, 0, False)
    assert generated == [2]  # six questions, two videos: two adapters, one hypernetwork call
    for item in items:  # the same answers as internalizing for each question alone
        single = runner._predict(
            model,
            [item],
            {item.id: item.video},
            runner.load_eval_video,
            "adapter",
            2,
            None,
            runner._PredictionCache(None, "m"),
            3,
            1,
            0,
            progress=False,
        )
        assert single[item.id] == shared[item.id]


def test_mixed_batch_applies_adapters_while_the_hypernetwork_is_active(checkpoint, clips):
    import torch
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    tuner = model.base_model
    tuner.load_generated_adapter(tuner.generate_adapter(clips[0]), "a", activate=False)
    assert tuner.active_adapter == "default"
    adapted = tuner.answer(["what moves?"], adapter_names=["a"], max_new_tokens=3)
    base = tuner.answer(["what moves?"], max_new_tokens=3)
    tuner.set_adapter("a")
    with torch.no_grad():
        assert tuner.answer(["what moves?"], max_new_tokens=3) == adapted
    assert tuner.generated_adapters == ["a"] and isinstance(base, list)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "1", "video_path": "a.mp4", "prompt": "q", "target_text": "a"}\n{not json}\n', r"manifest.jsonl:2"),
        ('{"id": 1, "prompt": "q", "target_text": "a"}\n', r"manifest.jsonl:1: missing field"),
        ("\n", "empty"),
    ],
)
def test_malformed_manifests(tmp_path, content, message):
    path = tmp_path / "manifest.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_eval_items(path)


def test_bad_arguments(checkpoint, manifest, tmp_path):
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint)
    items = load_eval_items(manifest)
    for margin in (0, -0.05, float("inf"), float("nan")):
        with pytest.raises(UsageError, match="margin must be > 0 and finite"):
            evaluate_adapters(model, items, margin=margin)
    with pytest.raises(UsageError, match="Unknown metric"):
        evaluate_adapters(model, items, metrics=["bleu9000"], margin=0.05)
    with pytest.raises(UsageError, match="Unknown control"):
        evaluate_adapters(model, items, margin=0.05, controls=["nothing"])
    for name, value in (("frames", [12, 0]), ("sizes", [None, -1]), ("max_new_tokens", 0), ("batch_size", 0)):
        with pytest.raises(UsageError, match=f"{name} must be"):
            evaluate_adapters(model, items, margin=0.05, **{name: value})
    existing = tmp_path / "report"
    existing.write_text("")
    with pytest.raises(OutputPathError, match="report directory"):
        evaluate_adapters(model, items, margin=0.05, output_dir=existing)
    one_video = [runner.EvalItem(id=str(i), video=items[0].video, prompt="q", references=["x"]) for i in range(3)]
    with pytest.raises(EvalDataError, match="two different videos"):
        evaluate_adapters(model, one_video, margin=0.05, controls=["shuffled"])
    import datasets

    with pytest.raises(EvalDataError, match="empty"):
        load_eval_items(datasets.Dataset.from_list([]))


@pytest.mark.parametrize(
    "data, error, message",
    [
        ("notes.txt", EvalDataError, "neither a JSONL manifest nor a saved dataset"),
        ("folder", EvalDataError, "not a dataset saved with `save_to_disk`"),
        ("missing.jsonl", EvalDataNotFoundError, "No file or directory"),
        ("missing.txt", EvalDataNotFoundError, "No file or directory"),
        ("./missing", EvalDataNotFoundError, "No file or directory"),
        ("/no/such/data", EvalDataNotFoundError, "No file or directory"),
        ("some/where/data", EvalDataNotFoundError, "No file or directory"),
    ],
)
def test_eval_data_paths_are_never_looked_up_on_the_hub(local_eval_paths, data, error, message):
    with pytest.raises(error, match=message):
        load_eval_items(data)


@pytest.mark.parametrize("name", ["videoqa", "owner/videoqa", "owner/videoqa.v2"])
def test_eval_data_names_go_to_the_hub(monkeypatch, tmp_path, name):
    import datasets

    asked = []

    def not_there(path, *args, **kwargs):
        asked.append(path)
        raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", not_there)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EvalDataNotFoundError, match="no Hub dataset of that name"):
        load_eval_items(name)
    assert asked == [name]


def test_saved_dataset_without_the_split(tmp_path, clips):
    import datasets

    rows = [{"video": clip, "prompt": "what?", "target": "x"} for clip in clips]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    with pytest.raises(EvalDataError, match=r"no split 'test'; available: \['train'\]"):
        load_eval_items(tmp_path / "saved")
    assert len(load_eval_items(tmp_path / "saved", split="train")) == 3


def test_ask_and_internalize_commands(checkpoint, clips, tmp_path, capsys):
    adapter_dir = tmp_path / "adapter"
    assert cli_main(["--model", checkpoint, "internalize", clips[0], "-o", str(adapter_dir)]) == 0
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    assert (
        cli_main(
            ["--model", checkpoint, "ask", clips[0], "what moves?", "--compare", "--json", "--max-new-tokens", "2"]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)["answers"][0]
    assert answer["adapter"]["visual_tokens"] == 0 and answer["no_video"]["visual_tokens"] == 0
    assert answer["in_context"]["visual_tokens"] > 0
    # --model also works after the subcommand (the embedded default would refuse this tiny model's adapter)
    assert cli_main(["ask", str(adapter_dir), "what moves?", "--json", "--model", checkpoint]) == 0
    from_adapter = json.loads(capsys.readouterr().out)
    assert "load_adapter_s" in from_adapter
    assert cli_main(["--model", checkpoint, "ask", str(tmp_path / "nope.mp4"), "q"]) == 2
    assert "No video file" in capsys.readouterr().err


def test_retrained_hypernetwork_reuses_base_only_predictions(checkpoint, clips, tmp_path, monkeypatch):
    import torch
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    items = [runner.EvalItem(id=str(i), video=clip, prompt="what?", references=["x"]) for i, clip in enumerate(clips)]
    kwargs = dict(metrics=["exact_match"], margin=0.1, controls=["no_video"], frames=[2], max_new_tokens=2)
    evaluate_adapters(model, items, output_dir=tmp_path, progress=False, **kwargs)

    with torch.no_grad():  # "retrain" the hypernetwork
        for parameter in model.base_model.hypernetwork.parameters():
            parameter.add_(0.05)
    calls = {"video": 0, "adapter": 0}

    answer = model.base_model.answer

    def no_video_generation(*args, **kw):
        if kw.get("videos") is not None:
            calls["video"] += 1
            raise AssertionError("in-context predictions should come from the cache")
        return answer(*args, **kw)

    original = model.base_model.generate_adapter

    def counting(videos, *args, **kw):
        calls["adapter"] += 1
        return original(videos, *args, **kw)

    monkeypatch.setattr(model.base_model, "answer", no_video_generation)
    monkeypatch.setattr(model.base_model, "generate_adapter", counting)
    evaluate_adapters(model, items, output_dir=tmp_path, progress=False, **kwargs)
    assert calls == {"video": 0, "adapter": 1}  # adapter predictions are recomputed, base-only ones are not

    model.base_model.hyper_config.internalize_prompt = "Describe the video."  # same weights, other input
    evaluate_adapters(model, items, output_dir=tmp_path, progress=False, **kwargs)
    assert calls == {"video": 0, "adapter": 2}


def test_videos_are_sampled_as_the_evaluated_hypernetwork_reads_them(vlm, clips, monkeypatch):
    """A checkpoint that samples by fps (or by the reference's rule) is evaluated on the frames it was trained on,
    in every condition alike."""
    model = get_peft_model(vlm, small_config(fps=4.0)).eval()
    seen = []
    load_video = runner.load_video

    def recording(source, *args, **kwargs):
        seen.append(kwargs.get("fps"))
        return load_video(source, *args, **kwargs)

    monkeypatch.setattr(runner, "load_video", recording)
    items = [EvalItem(id=str(i), video=clip, prompt="what moves?", references=["x"]) for i, clip in enumerate(clips)]
    evaluate_adapters(model, items, margin=0.05, controls=[], frames=[4], max_new_tokens=2, progress=False)
    assert seen and set(seen) == {4.0}
