"""Manifests, dataset validation and `VideoTextCollator` (tiny offline SmolVLM, torchcodec-written clips)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Features, Value
from peft import get_peft_model

import peft_hyper
from peft_hyper.data import (
    DatasetValidationError,
    InvalidRowError,
    ManifestError,
    VideoGroupedSampler,
    VideoTextCollator,
    load_manifest,
    validate_dataset,
    video_key,
)
from peft_hyper.testing.models import build_tiny_smolvlm
from peft_hyper.testing.videos import make_test_frames, write_video

TINY_CONFIG = {"r": 4, "latent_dim": 32, "num_latents": 4, "num_blocks": 2, "num_heads": 2, "head_dim": 16}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    return [write_video(make_test_frames(8, 32, 32, seed=i), root / f"c{i}.mp4", fps=4) for i in range(3)]


@pytest.fixture(scope="module")
def peft_model():
    vlm, processor = build_tiny_smolvlm(0)
    model = get_peft_model(vlm, peft_hyper.HyperLoraConfig(**TINY_CONFIG, num_frames=4))
    model.set_processor(processor)
    return model


def _write_manifest(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------- manifests
def test_load_manifest_maps_reference_fields(tmp_path, clips):
    (tmp_path / "videos").mkdir()
    records = [
        {"id": "a", "video_path": str(clips[0]), "prompt": "Describe.", "task_type": "caption", "target_text": "Red."},
        {"id": "b", "video_path": "videos/x.mp4", "prompt": "Color?", "task_type": "qa", "target_text": "Blue."},
    ]
    manifest = _write_manifest(tmp_path / "m.jsonl", records[:1] + [""] + records[1:])  # a blank line is skipped
    ds = load_manifest(manifest)
    assert ds.column_names == ["video", "prompt", "target", "id", "task_type"]
    assert ds["id"] == ["a", "b"] and ds["target"] == ["Red.", "Blue."] and ds["task_type"] == ["caption", "qa"]
    assert ds["video"] == [str(clips[0]), str(tmp_path / "videos" / "x.mp4")]  # relative → manifest dir
    assert load_manifest(manifest, video_root="/data")["video"][1] == "/data/videos/x.mp4"
    validate_dataset(ds)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "m.jsonl:2: invalid JSON"),
        (json.dumps({"id": "x", "prompt": "p", "target_text": "t"}), "m.jsonl:2: missing field(s) ['video_path']"),
        (json.dumps({"video_path": "v.mp4", "prompt": 3, "target_text": "t"}), "m.jsonl:2: field 'prompt' must be"),
        (json.dumps(["a list"]), "m.jsonl:2: expected a JSON object"),
    ],
)
def test_load_manifest_errors_name_the_line(tmp_path, line, message):
    good = json.dumps({"id": "ok", "video_path": "v.mp4", "prompt": "p", "task_type": "qa", "target_text": "t"})
    manifest = _write_manifest(tmp_path / "m.jsonl", [good, line])
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_manifest(manifest)
    with pytest.raises(ManifestError, match="No manifest file"):
        load_manifest(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------------------- validation
def test_validate_dataset_errors():
    with pytest.raises(DatasetValidationError, match="empty"):
        validate_dataset(Dataset.from_dict({"video": [], "prompt": [], "target": []}))
    with pytest.raises(DatasetValidationError, match=r"lacks column\(s\) \['target'\]"):
        validate_dataset(Dataset.from_dict({"video": ["a.mp4"], "prompt": ["p"]}))
    with pytest.raises(DatasetValidationError, match="'prompt' must hold strings"):
        validate_dataset(Dataset.from_dict({"video": ["a.mp4"], "prompt": [1], "target": ["t"]}))
    with pytest.raises(DatasetValidationError, match="'video' must hold file paths"):
        validate_dataset(Dataset.from_dict({"video": [1.5], "prompt": ["p"], "target": ["t"]}))
    strings = Features({k: Value("string") for k in ("video", "prompt", "target")})
    with pytest.raises(DatasetValidationError, match="'target' has 1 null"):
        validate_dataset(Dataset.from_dict({"video": ["a"], "prompt": ["p"], "target": [None]}, features=strings))
    with pytest.raises(DatasetValidationError, match="must be a `datasets.Dataset`"):
        validate_dataset([{"video": "a", "prompt": "p", "target": "t"}])
    validate_dataset(Dataset.from_dict({"video": ["a"], "prompt": ["p"]}), require_target=False)


# ---------------------------------------------------------------------------------------------------------- collator
def test_collator_builds_aligned_student_teacher_and_hyper_inputs(peft_model, clips):
    tuner = peft_model.base_model
    collator = VideoTextCollator.from_model(peft_model, with_teacher=True)
    rows = [
        {"id": "a", "video": str(clips[0]), "prompt": "Describe the video.", "target": "A red square moves left."},
        {"id": "b", "video": str(clips[1]), "prompt": "What color?", "target": "Green."},
    ]
    batch = collator(rows)
    assert batch["num_skipped"] == 0 and batch["row_ids"] == ["a", "b"]

    # Hypernetwork inputs are exactly what the tuner builds at inference.
    expected = tuner.hypernetwork_inputs([peft_hyper.load_video(str(c), num_frames=4) for c in clips[:2]])
    for key, value in expected.items():
        assert torch.equal(batch[f"hyper_{key}"], value), key

    tokenizer = tuner.processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for i, row in enumerate(rows):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        mask = batch["attention_mask"][i].bool()
        assert (ids[mask] != image_id).all(), "the student never sees the video"
        answer = labels[labels != -100]
        assert tokenizer.decode(answer) == " " + row["target"] + "<end_of_utterance>"
        prompt_text = tokenizer.decode(ids[mask][labels[mask] == -100])
        assert prompt_text.endswith(f"User: {row['prompt']}<end_of_utterance>\nAssistant:")
        t_labels = batch["teacher_labels"][i]
        assert torch.equal(t_labels[t_labels != -100], answer), "teacher and student score the same answer tokens"
        t_ids = batch["teacher_input_ids"][i][batch["teacher_attention_mask"][i].bool()]
        assert (t_ids == image_id).sum() > 0, "the teacher sees the video"
    assert batch["teacher_pixel_values"].shape == batch["hyper_pixel_values"].shape


def test_collator_decodes_and_internalizes_each_distinct_video_once(peft_model, clips, tmp_path, monkeypatch):
    tuner = peft_model.base_model
    decoded: list[str] = []
    load_video = peft_hyper.data.load_video
    monkeypatch.setattr(
        peft_hyper.data, "load_video", lambda src, **kw: decoded.append(str(src)) or load_video(src, **kw)
    )
    missing = str(tmp_path / "missing.mp4")
    rows = [
        {"id": "a", "video": str(clips[0]), "prompt": "What color?", "target": "Red."},
        {"id": "b", "video": str(clips[1]), "prompt": "What color?", "target": "Green."},
        {"id": "gone1", "video": missing, "prompt": "p", "target": "t"},
        {"id": "c", "video": str(clips[0]), "prompt": "Describe the video.", "target": "A red square."},
        {"id": "gone2", "video": missing, "prompt": "p", "target": "t"},
    ]
    batch = VideoTextCollator.from_model(peft_model, with_teacher=True)(rows)
    assert decoded == [str(clips[0]), str(clips[1]), missing], "one decode per distinct video, failures included"
    assert batch["row_ids"] == ["a", "b", "c"] and batch["num_skipped"] == 2
    assert batch["video_index"].tolist() == [0, 1, 0]
    expected = tuner.hypernetwork_inputs([peft_hyper.load_video(str(c), num_frames=4) for c in clips[:2]])
    for key, value in expected.items():
        assert torch.equal(batch[f"hyper_{key}"], value), key
    assert batch["input_ids"].shape[0] == batch["teacher_input_ids"].shape[0] == 3  # questions stay per row


def test_video_key_and_grouped_sampler():
    assert video_key("a.mp4") == video_key(Path("a.mp4")) == video_key({"path": "a.mp4", "bytes": None})
    assert video_key(b"xyz") == video_key({"path": None, "bytes": b"xyz"}) != video_key(b"xy")
    assert video_key(None) is None and video_key(torch.zeros(2, 3, 4, 4)) is None

    keys = ["a"] * 5 + ["b"] * 3 + [None, None] + ["c"] * 4
    sampler = VideoGroupedSampler(keys, rows_per_video=2, seed=0)
    order = list(sampler)
    assert len(sampler) == len(keys) and sorted(order) == list(range(len(keys)))
    # Rows of a video come in groups of two (the last one possibly single): a, b, c give at least 2 + 1 + 2 pairs of
    # neighbours with the same video; rows without a key are never grouped.
    pairs = sum(keys[i] is not None and keys[i] == keys[j] for i, j in zip(order, order[1:], strict=False))
    assert pairs >= 5
    assert list(VideoGroupedSampler(keys, 2, seed=0)) == order, "deterministic for a seed and epoch"
    sampler.set_epoch(1)
    assert list(sampler) != order
    assert list(VideoGroupedSampler(keys, rows_per_video=1, seed=0)) != order
    with pytest.raises(ValueError, match="rows_per_video"):
        VideoGroupedSampler(keys, rows_per_video=0)


def test_collator_bad_rows_skip_with_count_or_raise(peft_model, clips, tmp_path, caplog):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00 ftypisom not really a video")
    rows = [
        {"id": "good", "video": str(clips[0]), "prompt": "p", "target": "t"},
        {"id": "missing", "video": str(tmp_path / "nope.mp4"), "prompt": "p", "target": "t"},
        {"id": "corrupt", "video": str(corrupt), "prompt": "p", "target": "t"},
        {"id": "no-target", "video": str(clips[1]), "prompt": "p", "target": None},
    ]
    collator = VideoTextCollator.from_model(peft_model, on_bad_row="skip")
    with caplog.at_level(logging.WARNING, logger="peft_hyper.data"):
        batch = collator(rows)
    assert batch["num_skipped"] == 3 and batch["row_ids"] == ["good"] and batch["input_ids"].shape[0] == 1
    assert collator.num_skipped == 3
    messages = " ".join(r.getMessage() for r in caplog.records)
    for row_id in ("missing", "corrupt", "no-target"):
        assert f"Row {row_id}" in messages
    assert "3 skipped so far" in messages

    empty = collator(rows[1:3])  # every row bad: an empty batch, not a crash
    assert empty["num_skipped"] == 2 and empty["input_ids"].shape[0] == 0

    strict = VideoTextCollator.from_model(peft_model, on_bad_row="raise")
    with pytest.raises(InvalidRowError, match="Row missing: cannot load its video"):
        strict(rows[:2])
    with pytest.raises(ValueError, match="on_bad_row"):
        VideoTextCollator.from_model(peft_model, on_bad_row="ignore")
