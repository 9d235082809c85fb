"""A long-video synthetic world: many scenes of the clip world ([`peft_hyper.testing.world`]) one after another.

A long video is a sequence of scenes, each a [`ClipSpec`] of the clip world shown for its own number of frames
(12-16 by default, near the 12 frames the embedded default was trained on), at 1 fps: frame ``k`` of the video is
at ``k`` seconds, and scene ``i`` is exactly ``render_clip(scene_i.clip, scene_i.num_frames, size)``, so every scene
looks like a clip the model was trained on. A [`LongVideoSpec`] is JSON-serialisable and sampled from a seed
([`sample_long_spec`]); scene seeds come from their own hash namespace ([`scene_seed`]), so no scene is a clip of
the clip world's train, validation or test splits.

Questions ([`long_questions`]) have short canonical answers and kinds ([`LONG_QA_KINDS`]) that reports group by:

- single-scene (``scene_attribute``, ``scene_motion``, ``scene_temporal``, ``scene_count``): a clip-world question
  about one scene, which is identified by a time cue written as SmolVLM's processor writes frame times
  ("in the scene at 01:40, what colour is the triangle?"). Each keeps the plain clip question and its scene, so the
  same question can be asked of the scene alone ([`scene_clip_dataset`]);
- cross-scene: ``cross_count`` ("how many scenes show a red circle?", number words ``zero``-``four``) and
  ``cross_order`` ("which comes first, the scene with the X or the scene with the Y?", X and Y each shown in one
  scene only, so only order tells them apart);
- ``caption``: the scenes' captions, each after its start time ([`long_caption`]).

[`make_long_dataset`] builds a `datasets.Dataset` with the columns of [`make_dataset`] plus the scene columns, and
[`render_long_spec_video`] is its evaluation video loader
(``frames2lora eval --video-loader peft_hyper.testing.long_world:render_long_spec_video``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UsageError
from ..saving import final_path
from ..video import Video, load_video
from .videos import write_video
from .world import (
    _NUMBER_WORDS,
    CAPTION_PROMPT,
    COLOURS,
    MOTIONS,
    QA,
    SHAPES,
    SIZES,
    ClipSpec,
    ObjectSpec,
    caption,
    questions,
    render_clip,
    sample_spec,
)

if TYPE_CHECKING:
    from datasets import Dataset, Features

__all__ = [
    "FPS",
    "LONG_QA_KINDS",
    "MAX_SCENE_COUNT",
    "SCENE_FRAMES",
    "LongQA",
    "LongVideoSpec",
    "Scene",
    "long_caption",
    "long_questions",
    "long_seed",
    "kind_counts",
    "make_long_dataset",
    "render_long_spec_video",
    "render_long_video",
    "sample_long_spec",
    "scene_clip_dataset",
    "scene_seed",
    "timestamp",
]

FPS = 1.0  # frame k of a long video is shown at k seconds
SCENE_FRAMES: tuple[int, int] = (12, 16)  # default range of a scene's frame count, both ends included
MAX_SCENE_COUNT = 4  # cross-scene counts are asked only where the answer is zero to four
LONG_QA_KINDS: tuple[str, ...] = (
    "scene_attribute",
    "scene_motion",
    "scene_temporal",
    "scene_count",
    "cross_count",
    "cross_order",
)

# The time cue that picks a scene. The plain clip-world question follows the comma; the count question ("how many
# objects appear in the video?") would contradict a scene cue, so it is rephrased.
T_CUE = "in the scene at {time}, "
T_CUE_COUNT = "how many objects appear in the scene at {time}?"
# Cross-scene templates (the template string is stored with every row, for answer priors per template).
T_SCENES_COLOUR = "how many scenes show a {colour} object?"
T_SCENES_SHAPE = "how many scenes show a {shape}?"
T_SCENES_NAME = "how many scenes show a {colour} {shape}?"
T_SCENES_FULL = "how many scenes show a {size} {colour} {shape}?"
T_SCENES_MOVING = "how many scenes show a {colour} {shape} that {motion}?"
T_SCENE_FIRST = "which comes first, the scene with the {a} or the scene with the {b}?"
# Each count template with the object attributes its descriptor fixes.
_COUNT_TEMPLATES: dict[str, tuple[str, ...]] = {
    T_SCENES_COLOUR: ("colour",),
    T_SCENES_SHAPE: ("shape",),
    T_SCENES_NAME: ("colour", "shape"),
    T_SCENES_FULL: ("size", "colour", "shape"),
    T_SCENES_MOVING: ("colour", "shape", "motion"),
}
_MIN_COUNT_SPREAD = 3  # see `_count_questions`
_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "motion": tuple(MOTIONS)}
# How order questions name an object, tried in turn until one names a single scene: colour and shape alone are
# rarely unique beyond a few scenes (18 combinations for ~2 objects per scene), so size and motion are added; with
# all four (180 combinations) most objects of a 70-scene video are singled out.
_ORDER_DESCRIPTORS: tuple[tuple[str, ...], ...] = (
    ("colour", "shape"),
    ("size", "colour", "shape"),
    ("colour", "shape", "motion"),
    ("size", "colour", "shape", "motion"),
)
_CLIP_KINDS = ("attribute", "motion", "temporal", "count")  # scene kinds are "scene_" + the clip world's kind


def timestamp(seconds: float) -> str:
    """``MM:SS`` as SmolVLM's processor writes a frame's time in the prompt ("Frame from 01:40"): whole seconds
    (truncated), minutes not wrapped into hours."""
    whole = int(seconds)
    return f"{whole // 60:02d}:{whole % 60:02d}"


# --------------------------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """One scene of a long video: a clip of the clip world, shown for ``num_frames`` frames (seconds, at 1 fps)."""

    clip: ClipSpec
    num_frames: int


@dataclass
class LongVideoSpec:
    """A complete, JSON-serialisable description of a long video: its scenes, in order. ``seed`` is provenance (what
    [`sample_long_spec`] sampled it from); the scenes alone define the video."""

    seed: int
    scenes: list[Scene] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        """Frames of the whole video (= its duration in seconds)."""
        return sum(scene.num_frames for scene in self.scenes)

    @property
    def scene_starts(self) -> list[int]:
        """Index of each scene's first frame, i.e. its start time in seconds."""
        return [int(start) for start in np.cumsum([0] + [scene.num_frames for scene in self.scenes])[:-1]]

    def scene_at(self, seconds: float) -> int:
        """Index of the scene on screen at ``seconds`` (a time in ``[0, num_frames)``)."""
        if not 0 <= seconds < self.num_frames:
            raise ValueError(f"time {seconds} s is outside the video (0 to {self.num_frames} s)")
        return int(np.searchsorted(self.scene_starts, seconds, side="right")) - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "scenes": [{"clip": scene.clip.to_dict(), "num_frames": scene.num_frames} for scene in self.scenes],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LongVideoSpec:
        scenes = [Scene(ClipSpec.from_dict(s["clip"]), int(s["num_frames"])) for s in data["scenes"]]
        if not scenes or any(scene.num_frames < 1 for scene in scenes):
            raise ValueError("a long video needs at least one scene, each of at least one frame")
        return cls(seed=int(data["seed"]), scenes=scenes)

    @classmethod
    def from_json(cls, text: str) -> LongVideoSpec:
        return cls.from_dict(json.loads(text))


def long_seed(seed: int, split: str, num_frames: int, index: int) -> int:
    """Seed of long video ``index`` of ``split`` at ``num_frames`` frames: a 63-bit hash in the long world's own
    namespace, so sets of different lengths and splits never share videos (nor scenes, see [`scene_seed`])."""
    return _hash63(f"peft-hyper/synthetic-long/{seed}/{split}/{num_frames}/{index}")


def scene_seed(video_seed: int, index: int) -> int:
    """Clip seed of scene ``index`` of the long video ``video_seed``: a 63-bit hash in a namespace of its own, apart
    from the clip world's [`clip_seed`] (so no scene is a clip of its train, validation or test splits)."""
    return _hash63(f"peft-hyper/synthetic-long/scene/{video_seed}/{index}")


def _hash63(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def _scene_count_range(num_frames: int, scene_frames: tuple[int, int]) -> tuple[int, int]:
    """The scene counts (both ends included) that split ``num_frames`` into scenes of ``scene_frames`` frames."""
    low, high = scene_frames
    if not 1 <= low <= high:
        raise UsageError(f"scene_frames must be (low, high) with 1 <= low <= high, got {scene_frames}.")
    fewest, most = math.ceil(num_frames / high), num_frames // low
    if num_frames < 1 or fewest > most:
        raise UsageError(
            f"{num_frames} frames cannot be cut into scenes of {low}-{high} frames; pick a total that is a sum of "
            f"such scenes (e.g. {low * 4} or {high * 4})."
        )
    return fewest, most


def sample_long_spec(
    seed: int,
    num_frames: int,
    num_scenes: int | tuple[int, int] | None = None,
    scene_frames: tuple[int, int] = SCENE_FRAMES,
) -> LongVideoSpec:
    """Sample a long video of exactly ``num_frames`` frames from ``seed``.

    Args:
        seed: the video's seed; scene ``i`` is ``sample_spec(scene_seed(seed, i))``.
        num_frames: total frames (seconds at 1 fps).
        num_scenes: how many scenes: a number, a ``(low, high)`` range sampled uniformly per video, or ``None`` for
            every count that fits (``ceil(num_frames / high)`` to ``num_frames // low``).
        scene_frames: ``(low, high)`` frames per scene, both included. Each scene starts at ``low`` frames, and the
            remaining frames are handed out one at a time to scenes below ``high``, chosen uniformly.

    Raises:
        UsageError: ``num_frames`` cannot be cut into ``num_scenes`` scenes of ``scene_frames`` frames.
    """
    fewest, most = _scene_count_range(num_frames, scene_frames)
    rng = np.random.default_rng([seed, 0])
    if num_scenes is None:
        low, high = fewest, most
    elif isinstance(num_scenes, tuple):
        low, high = num_scenes
    else:
        low = high = num_scenes
    if max(low, fewest) > min(high, most):
        raise UsageError(
            f"{num_frames} frames cannot be cut into {num_scenes} scenes of {scene_frames[0]}-{scene_frames[1]} "
            f"frames; with that scene length, use {fewest} to {most} scenes."
        )
    count = int(rng.integers(max(low, fewest), min(high, most) + 1))
    frames = np.full(count, scene_frames[0])
    for _ in range(num_frames - int(frames.sum())):
        frames[rng.choice(np.flatnonzero(frames < scene_frames[1]))] += 1
    scenes = [Scene(sample_spec(scene_seed(seed, i)), int(n)) for i, n in enumerate(frames)]
    return LongVideoSpec(seed=int(seed), scenes=scenes)


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def render_long_video(spec: LongVideoSpec, size: int | tuple[int, int] = 64) -> torch.Tensor:
    """All frames of ``spec``, uint8 ``(spec.num_frames, 3, H, W)``: each scene rendered as the clip world renders a
    clip of its frame count (``render_clip(scene.clip, scene.num_frames, size)``), scenes one after another."""
    return torch.cat([render_clip(scene.clip, scene.num_frames, size) for scene in spec.scenes])


def render_long_spec_video(source: str, num_frames: int, size: int | None) -> Video:
    """The evaluation video loader of the long world: the long video of ``source`` (a [`LongVideoSpec`] as JSON, the
    ``spec`` column of [`make_long_dataset`]) at 1 fps, ``size`` px square (64 when ``None``).

    A long video has a frame count of its own (its length in seconds), unlike a clip of the clip world, which can be
    rendered at any frame count over the same 12 seconds. So this loader behaves like decoding the video's 1-fps mp4
    with `load_video(..., num_frames)`: with ``num_frames`` at least the video's frames, every frame, each stamped
    with its second; with fewer, ``num_frames`` frames sampled uniformly (slot centres), stamped with their seconds,
    so scenes may be skipped. It never invents frames: evaluating a set "at 1,024 frames" means passing
    ``--frames 1024`` (or more) to a set of 1,024-frame videos.

    Pass it as ``frames2lora eval --video-loader peft_hyper.testing.long_world:render_long_spec_video``.
    """
    try:
        spec = LongVideoSpec.from_json(source)
    except (ValueError, KeyError, TypeError) as exc:  # a video path, a clip-world spec, JSON that is no spec
        raise UsageError(
            f"render_long_spec_video renders long-world specs (the `spec` column of make_long_dataset); "
            f"{str(source)[:80]!r} is not one ({type(exc).__name__}: {exc}). Clip-world specs take "
            "peft_hyper.testing.world:render_spec_video; video files need no --video-loader."
        ) from exc
    return load_video(render_long_video(spec, size or 64), num_frames=num_frames, source_fps=FPS)


# --------------------------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LongQA(QA):
    """A question about a long video. ``scenes`` lists the scenes it is about (the cued scene, the scenes a count
    counts, the two scenes an order question compares). Single-scene questions also carry the scene
    (``scene_index``), the plain clip-world question about it (``scene_question``) and the cue time in seconds."""

    scenes: tuple[int, ...] = ()
    scene_index: int | None = None
    scene_question: str | None = None
    cue_time: int | None = None


def long_caption(spec: LongVideoSpec) -> str:
    """The scenes' clip-world captions, each after its start time as the processor writes it, e.g. ``"at 00:00, a
    large red square stays still. at 00:12, a small blue circle moves up. then the blue circle disappears."``"""
    return " ".join(
        f"at {timestamp(start)}, {caption(scene.clip)}"
        for start, scene in zip(spec.scene_starts, spec.scenes, strict=True)
    )


def _matches(obj: ObjectSpec, attributes: dict[str, str]) -> bool:
    return all(getattr(obj, name) == value for name, value in attributes.items())


def _scenes_showing(spec: LongVideoSpec, attributes: dict[str, str]) -> tuple[int, ...]:
    """Indices of the scenes with at least one object of these attributes."""
    return tuple(
        i for i, scene in enumerate(spec.scenes) if any(_matches(obj, attributes) for obj in scene.clip.objects)
    )


def cued_question(kind: str, question: str, seconds: float | None) -> str:
    """A clip-world question of `kind` asked about the scene at `seconds` ("in the scene at 01:40, what colour is the
    triangle?"; the count question becomes "how many objects appear in the scene at 01:40?"). `seconds=None` gives
    the template, with `{time}` left in."""
    time = "{time}" if seconds is None else timestamp(seconds)
    if kind == "count":
        return T_CUE_COUNT.format(time=time)
    return T_CUE.format(time=time) + question


def _scene_questions(spec: LongVideoSpec, count: int, rng: np.random.Generator) -> list[LongQA]:
    """``count`` single-scene questions (fewer if the video has fewer), the kinds taken in turn (a shuffled cycle of
    the clip world's kinds) so that rarer kinds (temporal, count) are not crowded out, the scene uniform among those
    that have a question of the kind, the question uniform within it, and the cue time uniform over the scene's
    frames."""
    pools: dict[str, dict[int, list[QA]]] = {kind: {} for kind in _CLIP_KINDS}
    for i, scene in enumerate(spec.scenes):
        for qa in questions(scene.clip):
            pools[qa.kind].setdefault(i, []).append(qa)
    starts = spec.scene_starts
    kinds = [str(kind) for kind in rng.permutation(_CLIP_KINDS)]
    picked: list[LongQA] = []
    turn = 0
    while len(picked) < count and any(pools.values()):
        kind = kinds[turn % len(kinds)]
        turn += 1
        if not pools[kind]:
            continue
        index = int(rng.choice(sorted(pools[kind])))
        qa = pools[kind][index].pop(int(rng.integers(len(pools[kind][index]))))
        if not pools[kind][index]:
            del pools[kind][index]
        cue = starts[index] + int(rng.integers(spec.scenes[index].num_frames))
        question, template = cued_question(kind, qa.question, cue), cued_question(kind, qa.template, None)
        picked.append(
            LongQA(
                question=question,
                answer=qa.answer,
                kind=f"scene_{kind}",
                template=template,
                choices=qa.choices,
                scenes=(index,),
                scene_index=index,
                scene_question=qa.question,
                cue_time=cue,
            )
        )
    return picked


def _count_questions(spec: LongVideoSpec, count: int, rng: np.random.Generator) -> list[LongQA]:
    """``count`` "how many scenes show X?" questions with answers ``zero`` to ``MAX_SCENE_COUNT``, at most one per
    descriptor. Coarse descriptors ("a red object") are shown in too many scenes of a long video and fine ones ("a
    red square that moves left") in too few of a short one, so the templates range from one attribute to three, and
    for answers balanced *within* each template (what a text-only prior can exploit) each question picks a template
    uniformly among those whose descriptors reach at least ``_MIN_COUNT_SPREAD`` different answers (all templates if
    none do), then an answer uniformly among those its descriptors reach, then such a descriptor."""
    options: dict[str, dict[int, list[dict[str, str]]]] = {}  # template → answer → descriptors
    for template, names in _COUNT_TEMPLATES.items():
        for values in product(*(_VALUES[name] for name in names)):
            attributes = dict(zip(names, values, strict=True))
            shown = len(_scenes_showing(spec, attributes))
            if shown <= MAX_SCENE_COUNT:
                options.setdefault(template, {}).setdefault(shown, []).append(attributes)
    picked = []
    while len(picked) < count and options:
        spread = [template for template, answers in options.items() if len(answers) >= _MIN_COUNT_SPREAD]
        template = str(rng.choice(sorted(spread or options)))
        answer = int(rng.choice(sorted(options[template])))
        candidates = options[template][answer]
        attributes = candidates.pop(int(rng.integers(len(candidates))))
        if not candidates:
            del options[template][answer]
            if not options[template]:
                del options[template]
        words = {**attributes, "motion": _motion_words(attributes["motion"])} if "motion" in attributes else attributes
        picked.append(
            LongQA(
                question=template.format(**words),
                answer=_NUMBER_WORDS[answer],
                kind="cross_count",
                template=template,
                scenes=_scenes_showing(spec, attributes),
            )
        )
    return picked


def _motion_words(motion: str) -> str:
    """A motion as the clip world's captions say it: ``"moves left"``, ``"stays still"``."""
    return "stays still" if motion == "still" else f"moves {motion}"


def _describe(obj: ObjectSpec, names: tuple[str, ...]) -> str:
    """``obj`` in words by the attributes ``names``: size, colour and shape in that order, then its motion."""
    words = " ".join(getattr(obj, name) for name in ("size", "colour", "shape") if name in names)
    return f"{words} that {_motion_words(obj.motion)}" if "motion" in names else words


def _order_questions(spec: LongVideoSpec, count: int, rng: np.random.Generator) -> list[LongQA]:
    """``count`` "which comes first, the scene with the X or the scene with the Y?" questions. X and Y describe
    objects shown in one scene each, in the fewest words that single the scene out (``_ORDER_DESCRIPTORS``: "red
    square", "large red square", "red square that moves left", "large red square that stays still"), in two
    different scenes; both are shown, so only order tells them apart. Pairs are drawn uniformly without
    replacement and the choice order is random, so a no-video answer is at chance (0.5)."""
    unique: dict[str, int] = {}  # descriptor → the one scene that shows it
    for i, scene in enumerate(spec.scenes):
        for obj in scene.clip.objects:
            for names in _ORDER_DESCRIPTORS:
                attributes = {name: getattr(obj, name) for name in names}
                if _scenes_showing(spec, attributes) == (i,):
                    unique[_describe(obj, names)] = i
                    break
    descriptors = sorted(unique)
    pairs = [(a, b) for j, a in enumerate(descriptors) for b in descriptors[j + 1 :] if unique[a] != unique[b]]
    picked = []
    for index in rng.permutation(len(pairs))[:count]:
        a, b = pairs[index]
        if rng.random() < 0.5:
            a, b = b, a
        first = a if unique[a] < unique[b] else b
        picked.append(
            LongQA(
                question=T_SCENE_FIRST.format(a=a, b=b),
                answer=first,
                kind="cross_order",
                template=T_SCENE_FIRST,
                choices=(a, b),
                scenes=(unique[a], unique[b]),
            )
        )
    return picked


def long_questions(
    spec: LongVideoSpec, scene_questions: int = 12, count_questions: int = 4, order_questions: int = 4
) -> list[LongQA]:
    """Questions about ``spec`` with short canonical answers, deterministic in ``spec.seed``: ``scene_questions``
    single-scene, ``count_questions`` cross-scene count and ``order_questions`` cross-scene order questions (fewer
    when the video does not have that many; see [`_scene_questions`], [`_count_questions`], [`_order_questions`])."""
    rng = np.random.default_rng([spec.seed, 1])
    return (
        _scene_questions(spec, scene_questions, rng)
        + _count_questions(spec, count_questions, rng)
        + _order_questions(spec, order_questions, rng)
    )


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------


def _features() -> Features:
    from datasets import Features, List, Value

    from .world import _features as clip_features

    return Features(
        {
            **clip_features(),
            "scene_index": Value("int32"),  # the cued scene (single-scene rows; None otherwise)
            "scene_start": Value("int32"),  # its first frame = its start in seconds
            "scene_frames": Value("int32"),  # its frame count
            "cue_time": Value("int32"),  # the time in the cue, seconds
            "scene_prompt": Value("string"),  # the plain clip-world question about the scene alone
            "scene_spec": Value("string"),  # the scene's ClipSpec as JSON
            "scenes": List(Value("int32")),  # every scene the row is about
        }
    )


def _write(frames: torch.Tensor, path: Path) -> str:
    """Encode ``frames`` at 1 fps; the path the file will have once a save in progress (`atomic_directory`) is
    committed, so datasets built in a staging directory point at the final files."""
    return str(final_path(write_video(frames, path, fps=FPS, crf=12)))


def make_long_dataset(
    num_videos: int,
    seed: int,
    num_frames: int,
    num_scenes: int | tuple[int, int] | None = None,
    size: int = 64,
    video_dir: str | Path | None = None,
    *,
    split: str = "test",
    scene_frames: tuple[int, int] = SCENE_FRAMES,
    scene_questions: int = 12,
    count_questions: int = 4,
    order_questions: int = 4,
    captions: bool = True,
) -> Dataset:
    """A `datasets.Dataset` of long videos of exactly ``num_frames`` frames: one row per question
    ([`long_questions`]) plus, with ``captions``, one caption row ([`long_caption`]) per video.

    Video seeds come from [`long_seed`] (``seed``, ``split``, ``num_frames``, index), scene counts and lengths from
    [`sample_long_spec`] (``num_scenes``, ``scene_frames``). Columns: those of [`make_dataset`] (``spec`` holds the
    [`LongVideoSpec`]; render it with [`render_long_spec_video`]; ``num_frames`` the video's frames) plus
    ``scene_index``, ``scene_start``, ``scene_frames``, ``cue_time``, ``scene_prompt``, ``scene_spec`` (single-scene
    rows; ``None`` on others) and ``scenes`` (the scenes a row is about). With ``video_dir`` each video is also
    written to ``video_dir/<clip_id>.mp4`` (1 fps) and ``video`` holds that path.
    """
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for index in range(num_videos):
        spec = sample_long_spec(long_seed(seed, split, num_frames, index), num_frames, num_scenes, scene_frames)
        clip_id = f"long-{split}-s{seed}-f{num_frames}-{index:06d}"
        video = None
        if video_dir is not None:
            video = _write(render_long_video(spec, size), Path(video_dir) / f"{clip_id}.mp4")
        shared = {"clip_id": clip_id, "video": video, "spec": spec.to_json(), "num_frames": num_frames, "size": size}
        qas = long_questions(spec, scene_questions, count_questions, order_questions)
        if captions:
            rows.append(
                {
                    "id": f"{clip_id}-caption",
                    "prompt": CAPTION_PROMPT,
                    "target": long_caption(spec),
                    "task_type": "caption",
                    "template": CAPTION_PROMPT,
                    "choices": [],
                    "scenes": list(range(len(spec.scenes))),
                    **shared,
                }
            )
        starts = spec.scene_starts
        for j, qa in enumerate(qas):
            scene = None if qa.scene_index is None else spec.scenes[qa.scene_index]
            rows.append(
                {
                    "id": f"{clip_id}-q{j}",
                    "prompt": qa.question,
                    "target": qa.answer,
                    "task_type": qa.kind,
                    "template": qa.template,
                    "choices": list(qa.choices),
                    "scenes": list(qa.scenes),
                    "scene_index": qa.scene_index,
                    "scene_start": None if scene is None else starts[qa.scene_index],
                    "scene_frames": None if scene is None else scene.num_frames,
                    "cue_time": qa.cue_time,
                    "scene_prompt": qa.scene_question,
                    "scene_spec": None if scene is None else scene.clip.to_json(),
                    **shared,
                }
            )
    features = _features()
    return Dataset.from_list([{name: row.get(name) for name in features} for row in rows], features=features)


def scene_clip_dataset(dataset: Dataset, video_dir: str | Path | None = None) -> Dataset:
    """The single-scene rows of a [`make_long_dataset`] dataset asked of their scene alone: each row's plain
    clip-world question (``scene_prompt``) about a one-scene long video of exactly the scene's frames — the same
    pixels as in the long video, stamped from 00:00 instead of the scene's start.

    Rows keep their ``id`` (so predictions pair with the long set's), kind, template, target and scene columns;
    ``spec`` holds the one-scene [`LongVideoSpec`] (render it with [`render_long_spec_video`] and ``--frames 16``
    or more to get all of the scene's frames), ``num_frames`` the scene's frames, ``clip_id``
    ``<long clip_id>-scene<k>``. With ``video_dir`` each scene is also written as ``video_dir/<clip_id>.mp4``.
    """
    from datasets import Dataset

    single = dataset.filter(lambda row: row["scene_index"] is not None)
    rows = []
    written: dict[str, str] = {}
    for row in single:
        long_spec = LongVideoSpec.from_json(row["spec"])
        clip = ClipSpec.from_json(row["scene_spec"])
        scene = LongVideoSpec(seed=long_spec.seed, scenes=[Scene(clip, row["scene_frames"])])
        clip_id = f"{row['clip_id']}-scene{row['scene_index']:03d}"
        if video_dir is not None and clip_id not in written:
            written[clip_id] = _write(render_long_video(scene, row["size"]), Path(video_dir) / f"{clip_id}.mp4")
        rows.append(
            {
                **row,
                "clip_id": clip_id,
                "video": written.get(clip_id),
                "spec": scene.to_json(),
                "prompt": row["scene_prompt"],
                "num_frames": row["scene_frames"],
            }
        )
    return Dataset.from_list(rows, features=dataset.features)


def kind_counts(dataset: Dataset) -> dict[str, int]:
    """Rows per ``task_type``, in [`LONG_QA_KINDS`] order (then ``caption``)."""
    counts = Counter(dataset["task_type"])
    return {kind: counts[kind] for kind in (*LONG_QA_KINDS, "caption") if counts[kind]}
