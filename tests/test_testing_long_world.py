"""Tests for the long-video synthetic world (`peft_hyper.testing.long_world`)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

from peft_hyper.errors import UsageError
from peft_hyper.testing import long_world as L
from peft_hyper.testing import world as S
from peft_hyper.testing.long_world import LongVideoSpec, Scene
from peft_hyper.testing.world import ClipSpec, ObjectSpec

LOADER = "peft_hyper.testing.long_world:render_long_spec_video"


def _spec(index: int, num_frames: int = 192, num_scenes=None) -> LongVideoSpec:
    return L.sample_long_spec(L.long_seed(0, "test", num_frames, index), num_frames, num_scenes)


def _hand_built() -> LongVideoSpec:
    """Three scenes of 12, 14 and 16 frames, starting at 0, 12 and 26 s."""

    def obj(shape, colour, size, motion, appear=0.0):
        return ObjectSpec(shape, colour, size, motion, 0.0 if motion == "still" else 1.0, 0.5, 0.5, appear, 1.0)

    scenes = [
        ClipSpec(1, "black", [obj("square", "red", "large", "still"), obj("circle", "blue", "small", "up", 0.4)]),
        ClipSpec(2, "navy", [obj("circle", "red", "large", "left"), obj("triangle", "green", "small", "down")]),
        ClipSpec(3, "plum", [obj("square", "blue", "small", "right"), obj("square", "red", "small", "still", 0.5)]),
    ]
    return LongVideoSpec(seed=7, scenes=[Scene(clip, n) for clip, n in zip(scenes, (12, 14, 16), strict=True)])


# ---------------------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------------------


def test_spec_is_deterministic_and_json_roundtrips():
    for index in range(5):
        spec = _spec(index)
        assert spec == _spec(index)
        assert LongVideoSpec.from_json(spec.to_json()) == spec
        json.loads(spec.to_json())  # plain JSON
        assert L.long_questions(spec) == L.long_questions(_spec(index))
    assert _spec(0) != _spec(1)
    assert L.make_long_dataset(3, seed=2, num_frames=48).to_dict() == L.make_long_dataset(3, 2, 48).to_dict()


@pytest.mark.parametrize(
    "num_frames, num_scenes", [(48, None), (48, 4), (48, 3), (192, 14), (192, (12, 16)), (1024, 70)]
)
def test_frame_totals_are_exact_and_scenes_are_12_to_16_frames(num_frames, num_scenes):
    counts = Counter()
    for index in range(20 if num_frames < 1024 else 5):  # sampling 70 scenes takes ~0.15 s
        spec = _spec(index, num_frames, num_scenes)
        frames = [scene.num_frames for scene in spec.scenes]
        assert spec.num_frames == sum(frames) == num_frames
        assert all(12 <= n <= 16 for n in frames)
        counts[len(frames)] += 1
    low, high = num_scenes if isinstance(num_scenes, tuple) else (num_scenes, num_scenes)
    if num_scenes is None:  # every count that fits
        low, high = -(-num_frames // 16), num_frames // 12
    assert min(counts) >= low and max(counts) <= high
    if num_scenes is None or isinstance(num_scenes, tuple):
        assert len(counts) > 1  # the count is sampled per video


def test_impossible_scene_counts_are_refused():
    with pytest.raises(UsageError, match="use 3 to 4 scenes"):
        L.sample_long_spec(0, 48, num_scenes=5)
    with pytest.raises(UsageError, match="cannot be cut into scenes of 12-16 frames"):
        L.sample_long_spec(0, 20)


def test_scene_times_and_timestamps():
    spec = _hand_built()
    assert spec.num_frames == 42 and spec.scene_starts == [0, 12, 26]
    assert [spec.scene_at(t) for t in (0, 11, 11.9, 12, 25, 26, 41)] == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="outside the video"):
        spec.scene_at(42)
    # As SmolVLM's processor writes frame times: whole seconds, two-digit minutes that do not wrap into hours.
    assert [L.timestamp(t) for t in (0, 9.9, 75, 1023, 3600)] == ["00:00", "00:09", "01:15", "17:03", "60:00"]


def test_seeds_are_disjoint_from_the_clip_world_splits():
    clip_world = {S.clip_seed(seed, split, i) for seed in range(3) for split in S._SPLIT_NAMES for i in range(2000)}
    videos = {
        L.long_seed(seed, split, n, i)
        for seed in range(3)
        for split in S._SPLIT_NAMES
        for n in (48, 1024)
        for i in range(100)
    }
    scenes = {L.scene_seed(video, k) for video in videos for k in range(70)}
    assert len(videos) == 3 * 3 * 2 * 100 and len(scenes) == len(videos) * 70
    assert not scenes & clip_world and not videos & clip_world
    spec = _spec(0, 1024, 70)
    assert [scene.clip for scene in spec.scenes] == [S.sample_spec(L.scene_seed(spec.seed, k)) for k in range(70)]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


def test_each_scene_renders_exactly_as_a_clip_of_its_frame_count():
    spec = _spec(3, 192, 14)
    frames = L.render_long_video(spec, 32)
    assert frames.shape == (192, 3, 32, 32) and frames.dtype == torch.uint8
    for start, scene in zip(spec.scene_starts, spec.scenes, strict=True):
        assert torch.equal(frames[start : start + scene.num_frames], S.render_clip(scene.clip, scene.num_frames, 32))


def test_render_long_spec_video_is_the_1fps_video_never_stretched():
    spec = _spec(1, 48, 3)
    video = L.render_long_spec_video(spec.to_json(), 48, None)
    assert torch.equal(video.frames, L.render_long_video(spec, 64))
    assert video.metadata.timestamps == [float(k) for k in range(48)]  # frame k at k seconds
    # More frames than the video has: every frame once, as load_video gives from the 1-fps mp4.
    assert torch.equal(L.render_long_spec_video(spec.to_json(), 1024, 32).frames, L.render_long_video(spec, 32))
    # Fewer: sampled uniformly, stamped with their seconds.
    sampled = L.render_long_spec_video(spec.to_json(), 12, None)
    indices = sampled.metadata.frames_indices
    assert len(indices) == 12 and sampled.metadata.timestamps == [float(i) for i in indices]
    assert torch.equal(sampled.frames, L.render_long_video(spec, 64)[indices])
    for source in ("clip.mp4", S.sample_spec(0).to_json()):
        with pytest.raises(UsageError, match="renders long-world specs"):
            L.render_long_spec_video(source, 12, None)


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------------------------


_DESCRIPTOR = re.compile(
    r"(?:(?P<size>small|large) )?(?P<colour>[a-z]+)(?: (?P<shape>square|circle|triangle))?"
    r"(?: that (?:moves (?P<move>left|right|up|down)|(?P<still>stays still)))?"
)


def _attributes(descriptor: str) -> dict[str, str]:
    match = _DESCRIPTOR.fullmatch(descriptor)
    assert match, descriptor
    attributes = {k: v for k, v in match.groupdict().items() if v and k in ("size", "colour", "shape")}
    if attributes["colour"] in S.SHAPES:  # "a circle": the shape alone
        attributes = {"shape": attributes.pop("colour")}
    if match["move"] or match["still"]:
        attributes["motion"] = match["move"] or "still"
    return attributes


def _showing(spec: LongVideoSpec, attributes: dict[str, str]) -> list[int]:
    return [
        i
        for i, scene in enumerate(spec.scenes)
        if any(all(getattr(o, k) == v for k, v in attributes.items()) for o in scene.clip.objects)
    ]


def _resolve(spec: LongVideoSpec, qa: L.LongQA) -> str:
    """Answer a question from the spec independently of `long_questions`."""
    q = qa.question
    if m := re.fullmatch(r"how many scenes show an? (.+)\?", q):
        count = len(_showing(spec, _attributes(m[1].removesuffix(" object"))))
        return ["zero", "one", "two", "three", "four"][count]
    if m := re.fullmatch(r"which comes first, the scene with the (.+) or the scene with the (.+)\?", q):
        (a,), (b,) = _showing(spec, _attributes(m[1])), _showing(spec, _attributes(m[2]))  # one scene each
        assert a != b
        return m[1] if a < b else m[2]
    m = re.fullmatch(r"in the scene at (\d\d):(\d\d), (.+)", q) or re.fullmatch(
        r"how many objects appear in the scene at (\d\d):(\d\d)\?", q
    )
    assert m, q
    scene = spec.scene_at(int(m[1]) * 60 + int(m[2]))
    assert qa.scene_index == scene and qa.scenes == (scene,)
    plain = m[3] if m.lastindex == 3 else S.T_COUNT
    assert plain == qa.scene_question
    (answer,) = [clip_qa.answer for clip_qa in S.questions(spec.scenes[scene].clip) if clip_qa.question == plain]
    return answer


def test_questions_about_sampled_videos_are_correct():
    kinds = Counter()
    for num_frames, num_scenes in ((48, None), (192, 14), (1024, 70)):
        for index in range(6):
            spec = _spec(index, num_frames, num_scenes)
            qas = L.long_questions(spec, scene_questions=12, count_questions=6, order_questions=6)
            assert len({qa.question for qa in qas}) == len(qas)
            for qa in qas:
                assert qa.kind in L.LONG_QA_KINDS
                assert qa.answer == _resolve(spec, qa), qa
                assert not qa.choices or qa.answer in qa.choices
                kinds[qa.kind] += 1
    assert set(kinds) == set(L.LONG_QA_KINDS)
    assert kinds["cross_order"] == kinds["cross_count"] == 3 * 6 * 6  # enough unique objects even at 70 scenes


def test_ground_truth_of_a_hand_built_video():
    spec = _hand_built()
    qas = L.long_questions(spec, scene_questions=100, count_questions=100, order_questions=100)
    answers = {qa.question: qa.answer for qa in qas}
    # Counts: scenes, not objects; every descriptor shown in at most four scenes is asked once.
    assert answers["how many scenes show a red object?"] == "three"
    assert answers["how many scenes show a blue object?"] == "two"
    assert answers["how many scenes show a yellow object?"] == "zero"
    assert answers["how many scenes show a square?"] == "two"
    assert answers["how many scenes show a red square?"] == "two"
    assert answers["how many scenes show a small red square?"] == "one"
    assert answers["how many scenes show a red square that stays still?"] == "two"
    assert answers["how many scenes show a red circle that moves left?"] == "one"
    # Order: objects shown in one scene only, named by colour and shape, or with their size where only that is unique.
    order = {frozenset(qa.choices): qa.answer for qa in qas if qa.kind == "cross_order"}
    assert order[frozenset({"large red square", "small red square"})] == "large red square"
    assert order[frozenset({"blue square", "green triangle"})] == "green triangle"
    assert order[frozenset({"blue circle", "red circle"})] == "blue circle"
    assert not any("red square" in choices for choices in order)  # shown in two scenes: ambiguous, never asked
    assert not order.keys() & {frozenset({"red circle", "green triangle"})}  # the same scene: no order
    # Cue → scene: the cue is a time inside the scene; the question is the clip-world question about it.
    for qa in qas:
        if qa.scene_index is not None:
            start, frames = spec.scene_starts[qa.scene_index], spec.scenes[qa.scene_index].num_frames
            assert start <= qa.cue_time < start + frames
            assert L.timestamp(qa.cue_time) in qa.question
            clip_answers = {c.question: c.answer for c in S.questions(spec.scenes[qa.scene_index].clip)}
            assert clip_answers[qa.scene_question] == qa.answer
    scene1 = {qa.question: qa.answer for qa in qas if qa.scene_index == 1}
    assert any(re.fullmatch(r"in the scene at 00:(1[2-9]|2[0-5]), what shape is the red object\?", q) for q in scene1)
    assert answers[next(q for q in scene1 if q.endswith("what shape is the red object?"))] == "circle"
    assert L.long_caption(spec).startswith(
        "at 00:00, a large red square stays still. then a small blue circle appears and moves up. at 00:12, "
    )
    assert "at 00:26, a small blue square moves right. then a small red square appears and stays still." in (
        L.long_caption(spec)
    )


def test_answers_are_balanced_and_the_no_video_floor_is_low():
    dataset = L.make_long_dataset(100, seed=0, num_frames=192, num_scenes=14, scene_questions=2, captions=False)
    prior = S.answer_prior_accuracy(dataset)
    assert set(prior) == set(L.LONG_QA_KINDS)
    assert prior["cross_count"] < 0.40  # five answers, zero to four
    assert prior["cross_order"] < 0.56  # two choices, position random
    order = dataset.filter(lambda row: row["task_type"] == "cross_order")
    positions = Counter(
        choices.index(target) for choices, target in zip(order["choices"], order["target"], strict=True)
    )
    assert abs(positions[0] / sum(positions.values()) - 0.5) < 0.06
    counts = Counter(dataset.filter(lambda row: row["task_type"] == "cross_count")["target"])
    assert set(counts) == {"zero", "one", "two", "three", "four"} and min(counts.values()) > 0.05 * counts.total()
    # The single-scene questions are the clip world's, with its balance: positions of scenes spread over the video.
    scene_index = Counter(i for i in dataset["scene_index"] if i is not None)
    assert set(scene_index) == set(range(14))


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------


def test_dataset_rows(tmp_path):
    dataset = L.make_long_dataset(3, seed=1, num_frames=48, num_scenes=3, size=32, video_dir=tmp_path / "videos")
    assert set(S.make_dataset(1, seed=0).column_names) < set(dataset.column_names)
    assert len(set(dataset["id"])) == len(dataset) and len(set(dataset["clip_id"])) == 3
    assert set(dataset["num_frames"]) == {48} and set(dataset["size"]) == {32}
    for row in dataset:
        spec = LongVideoSpec.from_json(row["spec"])
        if row["task_type"] == "caption":
            assert row["prompt"] == S.CAPTION_PROMPT and row["target"] == L.long_caption(spec)
        elif row["task_type"].startswith("scene_"):
            k = row["scene_index"]
            assert row["scenes"] == [k] and row["scene_start"] == spec.scene_starts[k]
            assert row["scene_frames"] == spec.scenes[k].num_frames
            assert ClipSpec.from_json(row["scene_spec"]) == spec.scenes[k].clip
            assert row["prompt"].endswith(row["scene_prompt"]) or row["scene_prompt"] == S.T_COUNT
        else:
            assert row["scene_index"] is row["scene_prompt"] is row["scene_spec"] is row["cue_time"] is None
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(dataset[0]["video"])
    assert decoder.metadata.num_frames == 48 and decoder.metadata.average_fps == pytest.approx(1.0)
    assert len(list((tmp_path / "videos").iterdir())) == 3
    captionless = L.make_long_dataset(3, seed=1, num_frames=48, num_scenes=3, captions=False)
    assert "caption" not in captionless["task_type"] and len(captionless) == len(dataset) - 3


def test_scene_clip_set_asks_the_plain_question_of_the_same_frames(tmp_path):
    dataset = L.make_long_dataset(2, seed=0, num_frames=48, scene_questions=5)
    clips = L.scene_clip_dataset(dataset, video_dir=tmp_path / "scenes")
    single = dataset.filter(lambda row: row["scene_index"] is not None)
    assert clips["id"] == single["id"] and clips["target"] == single["target"]
    assert clips["prompt"] == single["scene_prompt"] and clips["task_type"] == single["task_type"]
    wholes = {spec: L.render_long_spec_video(spec, 48, None).frames for spec in set(single["spec"])}
    for long_row, row in zip(single, clips, strict=True):
        start, frames = long_row["scene_start"], long_row["scene_frames"]
        whole = wholes[long_row["spec"]]
        alone = L.render_long_spec_video(row["spec"], 16, None)
        assert row["num_frames"] == frames == alone.num_frames
        assert torch.equal(alone.frames, whole[start : start + frames])
        assert alone.metadata.timestamps[0] == 0.0
    assert len(list((tmp_path / "scenes").iterdir())) == len(set(clips["clip_id"]))


def test_frames2lora_eval_renders_long_specs_through_the_video_loader_flag(tiny_base_dir, tmp_path, monkeypatch):
    from conftest import small_config
    from peft import get_peft_model
    from transformers import SmolVLMForConditionalGeneration

    from peft_hyper import cli
    from peft_hyper.evaluation.runner import import_video_loader

    assert import_video_loader(LOADER) is L.render_long_spec_video
    checkpoint = tmp_path / "ckpt"
    get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir), small_config()).save_pretrained(
        checkpoint
    )
    data = tmp_path / "long"
    dataset = L.make_long_dataset(
        2, seed=0, num_frames=24, scene_questions=1, count_questions=1, order_questions=1, captions=False
    )
    dataset.save_to_disk(data)
    calls = []
    render = L.render_long_spec_video

    def recording(source, num_frames, size):
        video = render(source, num_frames, size)
        calls.append((num_frames, video.num_frames))
        return video

    monkeypatch.setattr(L, "render_long_spec_video", recording)  # what `--video-loader` resolves at run time
    out = tmp_path / "report"
    argv = ["--model", str(checkpoint), "eval", "--data", str(data), "--margin", "0.1", "--frames", "24,12"]
    argv += ["--controls", "no_video", "--max-new-tokens", "1", "--out", str(out), "--video-loader", LOADER]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["excluded"] == {}
    assert set(results["predictions"]) == {"in_context@24", "adapter@24", "no_video@24", "in_context@12", "adapter@12"}
    assert {len(results["predictions"][key]) for key in results["predictions"]} == {len(dataset)}
    assert {(24, 24), (12, 12)} <= set(calls)  # all 24 frames at --frames 24, 12 sampled at --frames 12


def test_long_videos_and_datasets_are_pinned():
    """The held-out long sets and any report made from them are reproducible only if a seed keeps giving the same
    spec, frames and rows (as the clip world's are pinned in test_world_checksums.py)."""
    import hashlib

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    spec = L.sample_long_spec(L.long_seed(0, "test", 48, 0), 48)
    assert digest(spec.to_json().encode()) == "647734a512719f92"
    assert digest(L.render_long_video(spec, 64).numpy().tobytes()) == "8f3eba0f94d907f9"
    rows = L.make_long_dataset(2, seed=0, num_frames=48).to_list()
    assert len(rows) == 42 and digest(json.dumps(rows, sort_keys=True).encode()) == "8841e9df8a51aecc"
