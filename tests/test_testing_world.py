"""Tests for the synthetic video world (`peft_hyper.testing.world`)."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peft_hyper.testing import world as S
from peft_hyper.testing.world import ClipSpec, ObjectSpec

SEEDS = range(300)


def _spec(seed: int, **kwargs) -> ClipSpec:
    return S.sample_spec(seed, **kwargs)


def _colour_mask(frames: torch.Tensor, colour: str) -> torch.Tensor:
    """``(T, H, W)`` mask of pixels exactly equal to a palette colour (rendered frames only)."""
    return (frames == torch.tensor(S.COLOURS[colour], dtype=torch.uint8).view(1, 3, 1, 1)).all(dim=1)


def _bbox_centres(mask: torch.Tensor) -> list[tuple[float, float] | None]:
    """Per frame, the centre of the mask's bounding box in pixels (None when empty)."""
    centres = []
    for m in mask:
        ys, xs = torch.nonzero(m, as_tuple=True)
        if ys.numel() == 0:
            centres.append(None)
        else:
            centres.append(((xs.min() + xs.max() + 1).item() / 2, (ys.min() + ys.max() + 1).item() / 2))
    return centres


# ---------------------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------------------


def test_spec_is_deterministic_and_json_roundtrips():
    for seed in range(20):
        spec = _spec(seed)
        assert spec == _spec(seed)
        assert ClipSpec.from_json(spec.to_json()) == spec
        json.loads(spec.to_json())  # plain JSON
        assert torch.equal(S.render_clip(spec, 12, 64), S.render_clip(_spec(seed), 12, 64))
    assert _spec(0) != _spec(1)


def test_spec_invariants():
    dense = S.frame_times(400)
    for seed in SEEDS:
        spec = _spec(seed)
        assert spec.background in S.BACKGROUNDS
        assert 1 <= len(spec.objects) <= 3
        assert len({o.colour for o in spec.objects}) == len(spec.objects)  # colours unique within a clip
        times = sorted(t for o in spec.objects for t in (o.appear, o.disappear) if 0 < t < 1)
        assert all(b - a >= S._MIN_EVENT_GAP - 1e-6 for a, b in zip(times, times[1:], strict=False))
        for obj, track in zip(spec.objects, S.object_tracks(spec, dense), strict=True):
            assert obj.shape in S.SHAPES and obj.colour in S.COLOURS and obj.motion in S.MOTIONS
            assert 0.25 <= obj.extent <= 0.45
            assert obj.disappear - obj.appear >= S._MIN_VISIBLE - 1e-6
            half = obj.extent / 2
            x, y = track["x"][track["visible"]], track["y"][track["visible"]]
            assert (x - half >= -1e-6).all() and (x + half <= 1 + 1e-6).all()
            assert (y - half >= -1e-6).all() and (y + half <= 1 + 1e-6).all()
            if obj.motion != "still":  # moving objects cross most of the available range while visible
                travel = np.ptp(x) + np.ptp(y)
                assert travel >= 0.7 * (1 - obj.extent - 2 * S._MARGIN)


def test_backgrounds_are_never_mid_grey():
    for rgb in S.BACKGROUNDS.values():
        assert max(abs(c - 127.5) for c in rgb) > 60
    # A frame without objects is a uniform background; SmolVLM would drop it only if it were mid-grey.
    spec = ClipSpec(seed=0, background="black", objects=[])
    frames = S.render_clip(spec, 4, 32)
    assert (frames.float() / 255 - 0.5).abs().max() > 0.2


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 256, (48, 80)])
def test_render_shapes_and_dtype(size):
    spec = _spec(7)
    frames = S.render_clip(spec, 12, size)
    height, width = (size, size) if isinstance(size, int) else size
    assert frames.shape == (12, 3, height, width) and frames.dtype == torch.uint8
    for obj, track in zip(spec.objects, S.object_tracks(spec, S.frame_times(12)), strict=True):
        present = _colour_mask(frames, obj.colour).flatten(1).any(dim=1).numpy()
        assert not (present & ~track["visible"]).any()  # never drawn outside its interval


def test_object_area_is_resolution_independent():
    spec = ClipSpec(
        seed=0, background="navy", objects=[ObjectSpec("circle", "red", "large", "still", 0, 0.5, 0.5, 0, 1)]
    )
    fractions = [_colour_mask(S.render_clip(spec, 1, size), "red").float().mean().item() for size in (32, 256, 1024)]
    expected = np.pi / 4 * S.SIZES["large"] ** 2
    assert all(abs(f - expected) < 0.02 for f in fractions), fractions


def test_same_events_at_any_frame_count():
    # Equal times give identical frames: frame k of 12 frames is frame 3k + 1 of 36 frames.
    for seed in range(10):
        spec = _spec(seed, num_objects=3)
        assert torch.equal(S.render_clip(spec, 12, 64), S.render_clip(spec, 36, 64)[1::3])
    # At 12 and 48 frames, every object is where its continuous track says it is (bbox centre within a pixel).
    size = 64
    for seed in range(10):
        spec = _spec(seed, num_objects=1)
        (obj,) = spec.objects
        for num_frames in (12, 48):
            frames = S.render_clip(spec, num_frames, size)
            (track,) = S.object_tracks(spec, S.frame_times(num_frames))
            for k, centre in enumerate(_bbox_centres(_colour_mask(frames, obj.colour))):
                assert (centre is not None) == bool(track["visible"][k])
                if centre is not None:
                    assert abs(centre[0] - track["x"][k] * size) <= 1.0
                    assert abs(centre[1] - track["y"][k] * size) <= 1.0


def test_render_is_fast():
    spec = _spec(3, num_objects=3)
    start = time.perf_counter()
    frames = S.render_clip(spec, 1024, 64)
    assert frames.shape == (1024, 3, 64, 64)
    assert time.perf_counter() - start < 2.0


def test_mp4_roundtrip_keeps_colours(tmp_path):
    from torchcodec.decoders import VideoDecoder

    palette = {**S.COLOURS, **S.BACKGROUNDS}
    names = list(palette)
    reference_colours = torch.tensor([palette[n] for n in names], dtype=torch.float32)
    for seed in range(4):
        spec = _spec(seed, num_objects=3)
        for num_frames, size in ((12, 64), (20, (48, 80))):
            path = S.write_clip(spec, tmp_path / f"{seed}.mp4", num_frames, size)
            decoder = VideoDecoder(str(path), seek_mode="exact")
            height, width = (size, size) if isinstance(size, int) else size
            assert decoder.metadata.num_frames == num_frames
            assert (decoder.metadata.height, decoder.metadata.width) == (height, width)
            decoded = decoder.get_frames_at(list(range(num_frames))).data.float()
            rendered = S.render_clip(spec, num_frames, size)
            for obj in spec.objects:
                mask = _colour_mask(rendered, obj.colour).float().unsqueeze(1)
                interior = -F.max_pool2d(-mask, 5, stride=1, padding=2) > 0.5  # eroded: away from chroma edges
                for k in range(num_frames):
                    if interior[k].sum() < 4:
                        continue
                    mean = decoded[k][interior[k].expand(3, -1, -1)].view(3, -1).mean(dim=1)
                    nearest = names[int((reference_colours - mean).norm(dim=1).argmin())]
                    assert nearest == obj.colour, (seed, k, obj.colour, mean)
                    assert (mean - torch.tensor(S.COLOURS[obj.colour])).abs().max() < 30


def test_render_spec_video_renders_a_spec_column_at_any_frame_count():
    from peft_hyper.errors import UsageError

    spec = _spec(3)
    video = S.render_spec_video(spec.to_json(), 12, None)
    assert torch.equal(video.frames, S.render_clip(spec, 12, 64)) and video.metadata.frames_indices == list(range(12))
    assert torch.equal(S.render_spec_video(spec.to_json(), 5, 32).frames, S.render_clip(spec, 5, 32))
    with pytest.raises(UsageError, match="renders synthetic-world specs"):
        S.render_spec_video("clip.mp4", 12, None)


def test_write_clip_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        S.write_clip(_spec(0), tmp_path / "x.mp4", 4, 33)


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------------------------


def _resolve(spec: ClipSpec, qa: S.QA) -> str:
    """Answer a question from the spec independently of `questions`, asserting the referent is unique."""

    def unique(**attrs) -> ObjectSpec:
        matches = [o for o in spec.objects if all(getattr(o, k) == v for k, v in attrs.items())]
        assert len(matches) == 1, (qa.question, matches)
        return matches[0]

    def by_name(name: str) -> ObjectSpec:
        colour, shape = name.split()
        return unique(colour=colour, shape=shape)

    q = qa.question
    if m := re.fullmatch(r"what colour is the (\w+)\?", q):
        return unique(shape=m[1]).colour
    if m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        return unique(colour=m[1]).shape
    if m := re.fullmatch(r"is the (\w+ \w+) small or large\?", q):
        return by_name(m[1]).size
    if m := re.fullmatch(r"which way does the (\w+ \w+) move\?", q):
        return by_name(m[1]).motion
    if q == "how many objects appear in the video?":
        return ["zero", "one", "two", "three"][len(spec.objects)]
    if m := re.fullmatch(r"which appears first, the (\w+ \w+) or the (\w+ \w+)\?", q):
        a, b = by_name(m[1]), by_name(m[2])
        assert a.appear != b.appear
        return (a if a.appear < b.appear else b).name
    if m := re.fullmatch(r"what appears after the (\w+ \w+)\?", q):
        ref = by_name(m[1])
        later = sorted((o for o in spec.objects if o.appear > ref.appear), key=lambda o: o.appear)
        assert later and (len(later) == 1 or later[1].appear > later[0].appear)
        return later[0].name
    raise AssertionError(f"unknown question {q!r}")


def test_questions_are_unambiguous_and_correct():
    kinds = Counter()
    for seed in SEEDS:
        spec = _spec(seed)
        qas = S.questions(spec)
        assert qas == S.questions(spec)  # deterministic
        assert len({qa.question for qa in qas}) == len(qas)
        for qa in qas:
            assert qa.kind in S.QA_KINDS
            assert qa.question == qa.question.lower() and qa.answer == qa.answer.lower()
            assert 1 <= len(qa.answer.split()) <= 2
            assert not qa.choices or qa.answer in qa.choices
            assert _resolve(spec, qa) == qa.answer
            kinds[qa.kind] += 1
    assert set(kinds) == set(S.QA_KINDS)


def test_caption_and_questions_for_a_hand_written_spec():
    spec = ClipSpec(
        seed=5,
        background="black",
        objects=[
            ObjectSpec("square", "red", "large", "still", 0.0, 0.3, 0.3, 0.0, 0.7),
            ObjectSpec("circle", "blue", "small", "up", 1.0, 0.7, 0.8, 0.4, 1.0),
        ],
    )
    assert S.caption(spec) == (
        "a large red square stays still. then a small blue circle appears and moves up. then the red square disappears."
    )
    answers = {qa.question: qa.answer for qa in S.questions(spec)}
    assert answers["how many objects appear in the video?"] == "two"
    assert answers["what colour is the circle?"] == "blue"
    assert answers["what shape is the red object?"] == "square"
    assert answers["which way does the blue circle move?"] == "up"
    assert answers["is the blue circle small or large?"] == "small"
    assert answers["what appears after the red square?"] == "blue circle"
    first = [q for q in answers if q.startswith("which appears first")]
    assert len(first) == 1 and answers[first[0]] == "red square"
    # A clip whose only object appears later starts its caption without "then".
    late = ClipSpec(seed=0, background="navy", objects=[spec.objects[1]])
    assert S.caption(late) == "a small blue circle appears and moves up."


def test_answers_are_balanced():
    answers: dict[str, Counter] = {}
    first_position = Counter()
    for seed in range(500):
        for qa in S.questions(_spec(seed)):
            answers.setdefault(qa.template, Counter())[qa.answer] += 1
            if qa.template == S.T_FIRST:
                first_position[qa.choices.index(qa.answer)] += 1

    def assert_uniform(template: str, values, tolerance: float) -> None:
        counter = answers[template]
        total = sum(counter.values())
        assert set(counter) == set(values), counter
        for value in values:
            assert abs(counter[value] / total - 1 / len(values)) < tolerance, (template, counter)

    assert_uniform(S.T_MOTION, S.MOTIONS, 0.05)
    assert_uniform(S.T_COLOUR, S.COLOURS, 0.05)
    assert_uniform(S.T_SHAPE, S.SHAPES, 0.06)
    assert_uniform(S.T_SIZE, S.SIZES, 0.06)
    assert_uniform(S.T_COUNT, ("one", "two", "three"), 0.07)
    assert abs(first_position[0] / sum(first_position.values()) - 0.5) < 0.08


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------


def test_make_dataset_rows():
    ds = S.make_dataset(6, seed=3)
    assert {"id", "video", "spec", "prompt", "target", "task_type", "num_frames", "size"} <= set(ds.column_names)
    assert len(set(ds["id"])) == len(ds)
    clips = Counter(ds["clip_id"])
    assert len(clips) == 6
    captions = ds.filter(lambda row: row["task_type"] == "caption")
    assert len(captions) == 6 and all(p == S.CAPTION_PROMPT for p in captions["prompt"])
    for row in captions:
        spec = ClipSpec.from_json(row["spec"])
        assert row["target"] == S.caption(spec)
        assert clips[row["clip_id"]] == 1 + len(S.questions(spec))
    assert set(ds["video"]) == {None} and set(ds["num_frames"]) == {12} and set(ds["size"]) == {64}
    assert set(ds["task_type"]) <= {"caption", *S.QA_KINDS}
    # Deterministic, and questions_per_clip keeps a subset.
    assert S.make_dataset(6, seed=3).to_dict() == ds.to_dict()
    subset = S.make_dataset(6, seed=3, questions_per_clip=2)
    assert set(Counter(subset["clip_id"]).values()) <= {3}
    assert set(subset["id"]) <= set(ds["id"])


def test_split_seeds_are_disjoint():
    splits = {name: {S.clip_seed(0, name, i) for i in range(2000)} for name in ("train", "validation", "test")}
    assert all(len(seeds) == 2000 for seeds in splits.values())
    assert not splits["train"] & splits["validation"]
    assert not splits["train"] & splits["test"]
    assert not splits["validation"] & splits["test"]
    assert S.clip_seed(0, "train", 0) != S.clip_seed(1, "train", 0)
    dd = S.make_dataset_dict(train=5, validation=3, test=3, seed=0)
    assert {k: len(set(v["clip_id"])) for k, v in dd.items()} == {"train": 5, "validation": 3, "test": 3}
    specs = {k: {json.loads(s)["seed"] for s in v["spec"]} for k, v in dd.items()}
    assert not specs["train"] & specs["validation"] and not specs["train"] & specs["test"]
    assert not specs["validation"] & specs["test"]


def test_manifest(tmp_path):
    ds = S.make_dataset(2, seed=1, num_frames=6, size=32, video_dir=tmp_path / "videos", split="test")
    path = S.to_jsonl_manifest(ds, tmp_path / "manifest.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(ds)
    for line, row in zip(lines, ds, strict=True):
        assert set(line) == {"id", "video_path", "prompt", "task_type", "target_text"}
        assert line["id"] == row["id"] and line["target_text"] == row["target"]
        assert line["video_path"].endswith(".mp4")
    for video in set(ds["video"]):
        assert (tmp_path / "videos").resolve() in Path(video).resolve().parents
    with pytest.raises(ValueError, match="no video"):
        S.to_jsonl_manifest(S.make_dataset(1, seed=1), tmp_path / "bad.jsonl")


def test_answer_prior_accuracy_is_near_chance():
    prior = S.answer_prior_accuracy(S.make_dataset(500, seed=0))
    assert set(prior) == set(S.QA_KINDS)
    assert prior["motion"] < 0.26  # chance 0.2
    assert prior["count"] < 0.40  # chance 1/3
    assert prior["attribute"] < 0.40  # colour 1/6, shape 1/3, size 1/2
    assert prior["temporal"] < 0.40  # "which first" 1/2, "what appears after" ~1/15
