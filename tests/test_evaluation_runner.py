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


# --- segmented internalization: composed adapters and their controls

SEGMENTS = dict(frames=[4], segment_frames=2)  # each clip's 4 sampled frames in 2 segments of 2
R, BIAS = 4, 4  # small_config: rank 4, bias rank 4


def _segment_items(clips) -> list[EvalItem]:
    questions = ("what colour is it?", "which way does it move?")
    return [
        EvalItem(id=f"{c}-{q}", video=clip, prompt=question, references=["x"])
        for c, clip in enumerate(clips)
        for q, question in enumerate(questions)
    ]


def _own_ranks(state_dict: dict) -> dict:
    """The video-dependent ranks of a (composed) adapter: every rank but the trailing bias block."""
    return {key: value[:-BIAS] if ".lora_A." in key else value[:, :-BIAS] for key, value in state_dict.items()}


def _record_segment_adapters(patch: pytest.MonkeyPatch) -> dict[tuple[str, str], dict]:
    """(condition, video) → the adapter a segment condition loaded for that video, filled as the evaluation runs."""
    loaded: dict[tuple[str, str], dict] = {}
    adapter = runner._SegmentAdapters.adapter

    def recording(self, condition, source):
        loaded[condition, source] = adapter(self, condition, source)
        return loaded[condition, source]

    patch.setattr(runner._SegmentAdapters, "adapter", recording)
    return loaded


@pytest.fixture(scope="module")
def segment_run(checkpoint, clips):
    """One evaluation with every segment condition: the run, the adapter each segment condition loaded for each
    video, and each clip's segment adapters generated on their own."""
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    with pytest.MonkeyPatch.context() as patch:
        loaded = _record_segment_adapters(patch)
        run = evaluate_adapters(
            model,
            _segment_items(clips),
            metrics=["exact_match"],
            margin=0.1,
            max_new_tokens=3,
            progress=False,
            **SEGMENTS,
        )
    tuner = model.base_model
    parts = {clip: tuner.generate_segment_adapters(runner.load_eval_video(clip, 4), 2) for clip in clips}
    return model, run, loaded, parts


def test_segment_frames_adds_composed_and_its_controls(segment_run):
    _, run, loaded, _ = segment_run
    assert set(run.predictions) == {
        f"{c}@4"
        for c in (
            "in_context",
            "adapter",
            "composed",
            "no_video",
            "bias_only",
            "shuffled",
            "segments_shuffled",
            "one_segment",
        )
    }
    # `routed` needs a hypernetwork with a segment router (test_routed_condition_answers_with_the_chosen_segment)
    assert set(run.results.benchmarks[0].comparisons) == set(runner.ALL_CONDITIONS) - {"in_context", "routed"}
    assert run.results.metadata["segment_frames"] == 2
    assert {condition for condition, _ in loaded} == set(runner.SEGMENT_CONDITIONS) - {"routed"}


def test_routed_condition_answers_with_the_chosen_segment(tiny_base_dir, clips, monkeypatch):
    """With a router: a question routed to a segment is answered with that segment alone; one that names no time
    with the composition."""
    import torch
    from conftest import pointing_at

    model = get_peft_model(
        SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir), small_config(router_layer=1)
    ).eval()
    tuner = model.base_model
    loaded = _record_segment_adapters(monkeypatch)
    items = _segment_items(clips[:2])
    clip = runner.load_eval_video(clips[0], 4)
    late = clip.metadata.timestamps[3]  # in the second segment of 2 frames
    runs = {}
    for second in (late, None):
        pointing_at(tuner.router, second)
        runs[second] = evaluate_adapters(
            model,
            items,
            metrics=["exact_match"],
            margin=0.1,
            max_new_tokens=3,
            progress=False,
            controls=[],
            **SEGMENTS,
        )
    assert "routed@4" in runs[late].predictions
    assert "routed" in runs[late].results.benchmarks[0].comparisons
    parts = tuner.generate_segment_adapters(clip, 2)
    expected = tuner.compose_adapters([parts[1]])
    got = loaded["routed", (clips[0], 1)]
    assert all(torch.allclose(got[key], value, atol=1e-6) for key, value in expected.items())
    assert runs[None].predictions["routed@4"] == runs[None].predictions["composed@4"]
    assert ("routed", (clips[0], None)) in loaded


def test_composed_condition_answers_with_the_adapter_of_generate_adapter_by_segments(segment_run, clips):
    import torch

    model, run, loaded, _ = segment_run
    tuner = model.base_model
    for clip in clips:
        expected = tuner.generate_adapter(runner.load_eval_video(clip, 4), segment_frames=2)
        assert expected.keys() == loaded["composed", clip].keys()
        assert all(torch.equal(loaded["composed", clip][key], value) for key, value in expected.items())
        tuner.load_generated_adapter(expected, "check", activate=False)
        items = [item for item in _segment_items(clips) if item.video == clip]
        answers = tuner.answer([item.prompt for item in items], adapter_names="check", max_new_tokens=3)
        assert answers == [run.predictions["composed@4"][item.id] for item in items]
    tuner.set_adapter(tuner.active_hypernetwork)


def test_composed_condition_with_max_rank_is_generate_adapter_with_max_rank(checkpoint, clips, monkeypatch):
    import torch
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    tuner = model.base_model
    loaded = _record_segment_adapters(monkeypatch)
    items = _segment_items(clips[:2])[::2]  # one question per clip
    run = evaluate_adapters(
        model,
        items,
        metrics=["exact_match"],
        margin=0.1,
        controls=[],
        max_new_tokens=3,
        progress=False,
        max_rank=10,
        reference="composed",
        **SEGMENTS,
    )
    assert run.results.baseline == "composed"
    assert set(run.results.benchmarks[0].comparisons) == {"in_context", "adapter"}
    for item in items:
        expected = tuner.generate_adapter(runner.load_eval_video(item.video, 4), segment_frames=2, max_rank=10)
        composed = loaded["composed", item.video]
        assert {value.shape[0] for key, value in composed.items() if ".lora_A." in key} == {10}  # 2·4 + 4 capped
        assert composed.keys() == expected.keys()
        assert all(torch.equal(composed[key], value) for key, value in expected.items())


def test_segments_shuffled_keeps_each_position_and_takes_it_from_another_video(segment_run, clips):
    import torch

    _, _, loaded, parts = segment_run
    donors_seen = set()
    for clip in clips:
        adapter = _own_ranks(loaded["segments_shuffled", clip])
        for position in range(2):
            block = {
                key: value[position * R : (position + 1) * R]
                if ".lora_A." in key
                else value[:, position * R : (position + 1) * R]
                for key, value in adapter.items()
            }
            donors = [
                other
                for other in clips
                if all(torch.equal(block[key], value) for key, value in _own_ranks(parts[other][position]).items())
            ]
            assert len(donors) == 1 and donors[0] != clip  # another video's segment at the same position
            donors_seen.add((position, donors[0]))
        bias = {key: value for key, value in loaded["segments_shuffled", clip].items()}
        for key, value in parts[clip][0].items():  # the bias block once, as in a composed adapter
            tail = bias[key][-BIAS:] if ".lora_A." in key else bias[key][:, -BIAS:]
            assert torch.equal(tail, value[-BIAS:] if ".lora_A." in key else value[:, -BIAS:])
    assert len(donors_seen) == 6  # every video donates at every position (a derangement per position)


def test_one_segment_is_one_of_the_video_s_own_segments_alone(segment_run, clips):
    import torch

    _, _, loaded, parts = segment_run
    for clip in clips:
        adapter = loaded["one_segment", clip]
        matches = [
            k for k, part in enumerate(parts[clip]) if all(torch.equal(adapter[key], part[key]) for key in part)
        ]
        assert len(matches) == 1


def test_segment_controls_are_reproducible_for_a_seed_and_change_with_it(checkpoint, clips):
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    tuner = model.base_model
    sources = list(clips)

    def store(seed):
        return runner._SegmentAdapters(tuner, runner.load_eval_video, sources, 4, None, 2, None, seed)

    first, again = store(0), store(0)
    assert first.donors() == again.donors()
    assert [first.chosen_segment(s) for s in sources] == [again.chosen_segment(s) for s in sources]
    others = [store(seed) for seed in range(1, 4)]
    assert any(other.donors() != first.donors() for other in others)
    assert any([o.chosen_segment(s) for s in sources] != [first.chosen_segment(s) for s in sources] for o in others)
    assert all(first.donors()[s, k] != s for s in sources for k in range(2))  # 4 frames: 2 segments each


def test_segments_shuffled_refuses_a_position_only_one_video_has(checkpoint, clips):
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()

    def loader(source, num_frames, size):  # "long" has 3 segments of 2 frames, "short" one
        return runner.load_eval_video(clips[0] if source == "long" else clips[1], 6 if source == "long" else 2)

    segments = runner._SegmentAdapters(model.base_model, loader, ["long", "short"], 6, None, 2, None, 0)
    assert segments.adapter("one_segment", "long") is not None and segments.num_segments("short") == 1
    with pytest.raises(EvalDataError, match="at least two videos with a segment at position 1"):
        segments.adapter("segments_shuffled", "short")


def test_prediction_cache_keys_carry_the_segment_settings_and_the_seed():
    item = EvalItem(id="1", video="clip.mp4", prompt="what?", references=["x"])

    def key(condition, **settings):
        return runner._PredictionCache(None, "base", "|hyper", **settings).key(condition, 12, None, item)

    for condition in runner.SEGMENT_CONDITIONS:
        keys = {
            key(condition, segment_frames=4),
            key(condition, segment_frames=6),
            key(condition, segment_frames=4, max_rank=8),
        }
        assert len(keys) == 3
    for condition in ("in_context", "adapter", "no_video", "bias_only"):  # the whole-video conditions do not change
        assert key(condition) == key(condition, segment_frames=4, max_rank=8, seed=3)
    for condition in runner.SEEDED_CONDITIONS:
        assert key(condition, segment_frames=4) != key(condition, segment_frames=4, seed=1)
    # seed 0 keeps the key of caches written before seeds were keyed
    assert key("shuffled") == runner._PredictionCache(None, "base", "|hyper").key("shuffled", 12, None, item)


def test_a_rerun_with_other_segments_regenerates_only_the_segment_conditions(checkpoint, clips, tmp_path, monkeypatch):
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    tuner = model.base_model
    items = _segment_items(clips[:2])[::2]
    kwargs = dict(metrics=["exact_match"], margin=0.1, max_new_tokens=2, progress=False, output_dir=tmp_path)
    kwargs.update(controls=["one_segment"], frames=[4])
    evaluate_adapters(model, items, segment_frames=2, **kwargs)
    calls = {"segments": 0, "whole": 0, "in_context": 0}
    generate_segment_adapters, generate_adapter, answer = (
        tuner.generate_segment_adapters,
        tuner.generate_adapter,
        tuner.answer,
    )

    def counted_segments(*args, **kw):
        calls["segments"] += 1
        return generate_segment_adapters(*args, **kw)

    def counted_whole(*args, **kw):
        calls["whole"] += 1
        return generate_adapter(*args, **kw)

    def counted_answer(*args, **kw):
        calls["in_context"] += kw.get("videos") is not None
        return answer(*args, **kw)

    monkeypatch.setattr(tuner, "generate_segment_adapters", counted_segments)
    monkeypatch.setattr(tuner, "generate_adapter", counted_whole)
    monkeypatch.setattr(tuner, "answer", counted_answer)
    evaluate_adapters(model, items, segment_frames=2, **kwargs)
    assert calls == {"segments": 0, "whole": 0, "in_context": 0}  # all cached
    evaluate_adapters(model, items, segment_frames=4, **kwargs)
    assert calls == {"segments": 2, "whole": 0, "in_context": 0}  # once per video, for composed and one_segment
    evaluate_adapters(model, items, segment_frames=4, max_rank=6, **kwargs)
    assert calls == {"segments": 4, "whole": 0, "in_context": 0}


# --- the video in context where it does not fit the base


def _prompt_lengths(tuner, clip, frames, prompts) -> list[int]:
    video = runner.load_eval_video(clip, frames)
    return [tuner.video_inputs([video], [prompt])["input_ids"].shape[1] for prompt in prompts]


@pytest.fixture
def short_base(checkpoint, clips):
    """The tiny model with its maximum length set between the prompts of a short and a long question about 4 frames:
    at 2 frames both fit, at 4 only the short one, at 8 neither."""
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    tuner = model.base_model
    prompts = ["what?", "which of the shapes that appear in the clip moves to the left and which one stays still?"]
    at = {frames: _prompt_lengths(tuner, clips[0], frames, prompts) for frames in (2, 4, 8)}
    new_tokens = 2
    limit = at[4][0] + new_tokens
    assert at[2][1] + new_tokens <= limit < at[4][1] + new_tokens and at[8][0] + new_tokens > limit
    tuner.model.config.get_text_config().max_position_embeddings = limit
    items = [
        EvalItem(id=f"{c}-{q}", video=clip, prompt=prompt, references=["x"])
        for c, clip in enumerate(clips)
        for q, prompt in enumerate(prompts)
    ]
    return model, items, limit


def test_in_context_prompts_longer_than_the_base_are_not_run_and_reported(short_base, tmp_path, monkeypatch):
    model, items, limit = short_base
    kwargs = dict(metrics=["exact_match"], margin=0.1, controls=["no_video"], max_new_tokens=2, progress=False)
    run = evaluate_adapters(model, items, frames=[4, 2], output_dir=tmp_path, **kwargs)
    long_ids = {item.id for item in items if item.id.endswith("-1")}
    assert set(run.not_run) == {"in_context@4"} and set(run.not_run["in_context@4"]) == long_ids
    assert set(run.predictions["in_context@4"]) == {item.id for item in items} - long_ids
    assert len(run.predictions["in_context@2"]) == len(items) == len(run.predictions["adapter@4"])
    (record,) = run.results.not_run
    assert (record.condition, record.frames, record.items, record.total) == ("in_context", 4, 3, 6)
    assert f"{limit:,} positions" in record.reason
    benchmark = run.results.benchmarks[0]
    assert {c.n for c in benchmark.comparisons["adapter"].values()} == {3}  # paired on the items that fit
    assert {c.n for c in benchmark.by_frame_count[2]["adapter"].values()} == {6}
    report = run.report.markdown.read_text()
    assert "## Not run" in report and "| in_context | 4 | native | 3 of 6 |" in report
    results = json.loads(run.report.json.read_text())
    assert set(results["not_run_items"]["in_context@4"]) == long_ids
    assert len(results["predictions"]["in_context@4"]) == 3

    def no_processing(*args, **kwargs):
        raise AssertionError("prompts known not to fit must not be processed again")

    monkeypatch.setattr(model.base_model, "video_inputs", no_processing)
    rerun = evaluate_adapters(model, items, frames=[4, 2], output_dir=tmp_path, **kwargs)
    assert rerun.not_run == run.not_run and rerun.predictions == run.predictions


def test_without_an_in_context_reference_the_conditions_are_compared_with_each_other(short_base):
    model, items, _ = short_base
    kwargs = dict(metrics=["exact_match"], margin=0.1, controls=["no_video"], max_new_tokens=2, progress=False)
    with pytest.raises(UsageError, match=r"6 of 6 items do not fit the base at 8 frames .*--reference adapter"):
        evaluate_adapters(model, items, frames=[8, 4], **kwargs)
    run = evaluate_adapters(model, items, frames=[8, 4], reference="adapter", **kwargs)
    assert run.results.baseline == "adapter"
    benchmark = run.results.benchmarks[0]
    assert set(benchmark.comparisons) == {"no_video"}  # in context ran for no item at 8 frames
    assert set(benchmark.by_frame_count) == {4} and set(benchmark.by_frame_count[4]) == {"in_context"}
    assert {c.n for c in benchmark.by_frame_count[4]["in_context"].values()} == {3}
    assert [(r.frames, r.items) for r in run.results.not_run] == [(8, 6), (4, 3)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(controls=["segments_shuffled"]), r"\['segments_shuffled'\] recombine .*\(--segment-frames N\)"),
        (dict(controls=["one_segment", "no_video"]), r"\['one_segment'\] recombine"),
        (dict(max_rank=8), "max_rank .* caps the rank of composed adapters"),
        (dict(reference="composed"), "'composed' needs segment_frames"),
        (dict(reference="no_video", segment_frames=4), r"reference must be one of \['in_context', 'adapter', 'comp"),
        (dict(segment_frames=0), "segment_frames must be a whole number >= 1"),
        (dict(segment_frames=4, max_rank=True), "max_rank must be a whole number >= 1"),
        (dict(controls=["segments"]), r"Unknown control\(s\) \['segments'\]"),
    ],
)
def test_segment_settings_that_cannot_work(kwargs, message):
    with pytest.raises(UsageError, match=message):
        evaluate_adapters(None, [], margin=0.1, **kwargs)  # refused before the model or the data are touched


def test_default_controls_follow_segment_frames():
    assert runner.check_conditions(None) == list(runner.CONTROLS)
    assert runner.check_conditions(None, segment_frames=12) == [*runner.CONTROLS, *runner.SEGMENT_CONTROLS]
    assert runner.check_conditions(["no_video"], "composed", 12, 64) == ["no_video"]
