"""A procedurally generated "synthetic video world" for tests, training and evaluation.

A clip is a handful of large, flat-coloured shapes on a dark background that appear, move and disappear in continuous,
normalised clip time ``t in [0, 1]``. A clip is fully described by a JSON-serialisable [`ClipSpec`] sampled from a seed,
so the *same events* can be rendered at any frame count and resolution ([`render_clip`], [`write_clip`]), and exact
ground truth is available for captioning ([`caption`]) and question answering ([`questions`]). [`render_spec_video`]
is the video loader that lets `frames2lora eval` render a dataset's ``spec`` column
(``--video-loader peft_hyper.testing.world:render_spec_video``).

Design choices follow facts measured when training tiny SmolVLM models from scratch (`docs/embedded_default.md`): objects
cover 28-42% of the frame side, moving objects cross most of the frame while visible, colours are saturated and the
background is dark.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UsageError
from ..video import Video, load_video
from .videos import write_video

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, Features

__all__ = [
    "BACKGROUNDS",
    "CAPTION_PROMPT",
    "COLOURS",
    "MOTIONS",
    "QA",
    "QA_KINDS",
    "SHAPES",
    "SIZES",
    "ClipSpec",
    "ObjectSpec",
    "answer_prior_accuracy",
    "caption",
    "clip_seed",
    "frame_times",
    "make_dataset",
    "make_dataset_dict",
    "object_tracks",
    "questions",
    "render_clip",
    "render_spec_video",
    "sample_spec",
    "to_jsonl_manifest",
    "write_clip",
]

# Saturated, mutually distinct object colours (RGB). They stay recognisable after yuv420p / h264 encoding.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 255),
    "yellow": (250, 225, 25),
    "white": (245, 245, 245),
    "magenta": (225, 40, 225),
}
# Dark backgrounds: every object colour contrasts with every background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "navy": (16, 20, 72),
    "forest": (14, 60, 28),
    "plum": (64, 18, 64),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
# Object side as a fraction of the shorter frame side.
SIZES: dict[str, float] = {"small": 0.28, "large": 0.42}
# Unit direction in image coordinates (x to the right, y downwards).
MOTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
QA_KINDS: tuple[str, ...] = ("attribute", "motion", "count", "temporal")
CAPTION_PROMPT = "Describe the video."

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
_MAX_OBJECTS = 3
_MARGIN = 0.02  # keep objects this far (in frame sides) from the border
_MIN_EVENT_GAP = 0.15  # appear/disappear events are at least this far apart (> 1 frame at 12 frames)
_MIN_VISIBLE = 0.35  # every object is visible for at least this fraction of the clip
_HIDDEN_FRACTION = 0.4  # an object is "hidden" when objects above it cover more than this fraction of its bbox
_MAX_HIDDEN_TIME = 0.25  # ... and may be hidden for at most this fraction of its visible time
_MAX_LAYOUT_TRIES = 400
_CHUNK_ELEMENTS = 1 << 22  # frames * pixels per vectorised mask chunk (bounds temporary memory)

# Question templates. The template string (before formatting) is stored with every QA so that answer priors can be
# computed per template.
T_COLOUR = "what colour is the {shape}?"
T_SHAPE = "what shape is the {colour} object?"
T_SIZE = "is the {object} small or large?"
T_MOTION = "which way does the {object} move?"
T_COUNT = "how many objects appear in the video?"
T_FIRST = "which appears first, the {a} or the {b}?"
T_AFTER = "what appears after the {object}?"


@dataclass
class ObjectSpec:
    """One object of a clip. Positions are object centres in normalised frame coordinates (x right, y down)."""

    shape: str
    colour: str
    size: str
    motion: str
    speed: float  # frame sides per unit of clip time along the motion direction (0 when still)
    x: float  # centre at the appear time
    y: float
    appear: float  # visible for appear <= t < disappear, in normalised clip time
    disappear: float

    @property
    def name(self) -> str:
        """Canonical unique name within a clip, e.g. ``"red square"`` (colours are unique within a clip)."""
        return f"{self.colour} {self.shape}"

    @property
    def extent(self) -> float:
        """Side of the object's bounding box, as a fraction of the shorter frame side."""
        return SIZES[self.size]

    def visible(self, t: np.ndarray) -> np.ndarray:
        """Boolean visibility at clip times ``t``."""
        return (t >= self.appear) & (t < self.disappear)

    def center(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre ``(x, y)`` at clip times ``t`` (defined for all ``t``, meaningful where visible)."""
        dx, dy = MOTIONS[self.motion]
        elapsed = np.asarray(t, dtype=np.float64) - self.appear
        return self.x + dx * self.speed * elapsed, self.y + dy * self.speed * elapsed


@dataclass
class ClipSpec:
    """A complete, JSON-serialisable description of a synthetic clip. Objects are drawn in list order."""

    seed: int
    background: str
    objects: list[ObjectSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSpec:
        return cls(
            seed=int(data["seed"]),
            background=data["background"],
            objects=[ObjectSpec(**obj) for obj in data["objects"]],
        )

    @classmethod
    def from_json(cls, text: str) -> ClipSpec:
        return cls.from_dict(json.loads(text))

    def object_by_name(self, name: str) -> ObjectSpec:
        (obj,) = (o for o in self.objects if o.name == name)
        return obj

    def events(self) -> list[tuple[float, str, ObjectSpec]]:
        """``(time, "appear" | "disappear", object)`` for events strictly inside the clip, in temporal order."""
        events = []
        for obj in self.objects:
            if obj.appear > 0:
                events.append((obj.appear, "appear", obj))
            if obj.disappear < 1:
                events.append((obj.disappear, "disappear", obj))
        return sorted(events, key=lambda e: e[0])


@dataclass
class QA:
    """A question with a short canonical answer. ``choices`` is non-empty for multiple-choice templates."""

    question: str
    answer: str
    kind: str
    template: str
    choices: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------------


def _sample_timing(rng: np.random.Generator) -> tuple[float, float]:
    appear = 0.0 if rng.random() < 0.5 else float(rng.uniform(_MIN_EVENT_GAP, 0.55))
    disappear = 1.0
    lo = max(0.45, appear + _MIN_VISIBLE)
    if rng.random() < 0.5 and lo <= 1 - _MIN_EVENT_GAP:
        disappear = float(rng.uniform(lo, 1 - _MIN_EVENT_GAP))
    return appear, disappear


def _sample_place(rng: np.random.Generator, size: str, motion: str, duration: float) -> tuple[float, float, float]:
    """Start centre and speed such that the object stays inside the frame and crosses most of it while visible."""
    half = SIZES[size] / 2
    lo, hi = half + _MARGIN, 1 - half - _MARGIN
    x, y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    dx, dy = MOTIONS[motion]
    if motion == "still":
        return x, y, 0.0
    travel = float(rng.uniform(0.85, 1.0)) * (hi - lo)
    direction = dx + dy
    start = float(rng.uniform(lo, hi - travel)) if direction > 0 else float(rng.uniform(lo + travel, hi))
    if dx:
        x = start
    else:
        y = start
    return x, y, travel / duration


def _events_separated(timings: list[tuple[float, float]]) -> bool:
    times = sorted(t for interval in timings for t in interval if 0 < t < 1)
    return all(b - a >= _MIN_EVENT_GAP for a, b in zip(times, times[1:], strict=False))


def _occlusion(objects: list[ObjectSpec]) -> float:
    """Worst fraction, over objects, of an object's visible time during which it is mostly hidden.

    An object is "hidden" at time ``t`` when objects drawn above it cover more than ``_HIDDEN_FRACTION`` of its
    bounding box (bbox overlaps are summed, a conservative estimate of the union).
    """
    grid = frame_times(100)
    worst = 0.0
    for i, a in enumerate(objects):
        visible = a.visible(grid)
        ax, ay = a.center(grid)
        covered = np.zeros_like(grid)
        for b in objects[i + 1 :]:
            bx, by = b.center(grid)
            reach, cap = (a.extent + b.extent) / 2, min(a.extent, b.extent)
            inter = np.clip(reach - np.abs(ax - bx), 0, cap) * np.clip(reach - np.abs(ay - by), 0, cap)
            covered += np.where(b.visible(grid), inter, 0.0) / a.extent**2
        worst = max(worst, float((covered[visible] > _HIDDEN_FRACTION).mean()))
    return worst


def sample_spec(seed: int, num_objects: int | None = None) -> ClipSpec:
    """Sample a clip from ``seed``: background, 1-3 objects with distinct colours, motions and appear/disappear times.

    Attributes are sampled uniformly and independently (colours without replacement). Timing and placement are then
    re-sampled (never the attributes, so answers stay balanced) until appear/disappear events are at least
    ``_MIN_EVENT_GAP`` apart and no object is mostly hidden for more than ``_MAX_HIDDEN_TIME`` of its visible time;
    if no such layout is found, the least occluded candidate is kept.
    """
    rng = np.random.default_rng(seed)
    background = str(rng.choice(list(BACKGROUNDS)))
    n = int(rng.integers(1, _MAX_OBJECTS + 1)) if num_objects is None else num_objects
    if not 1 <= n <= len(COLOURS):
        raise ValueError(f"num_objects must be in [1, {len(COLOURS)}], got {n}")
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, size=n)]
    sizes = [str(s) for s in rng.choice(list(SIZES), size=n)]
    motions = [str(m) for m in rng.choice(list(MOTIONS), size=n)]
    best, best_score = None, float("inf")
    for attempt in range(_MAX_LAYOUT_TRIES):
        if attempt % 20 == 0:  # fresh timings now and then: some timings admit no clean placement
            timings = [_sample_timing(rng) for _ in range(n)]
            while not _events_separated(timings):
                timings = [_sample_timing(rng) for _ in range(n)]
        objects = []
        for shape, colour, size, motion, (appear, disappear) in zip(
            shapes, colours, sizes, motions, timings, strict=True
        ):
            x, y, speed = _sample_place(rng, size, motion, disappear - appear)
            objects.append(
                ObjectSpec(shape, colour, size, motion, *(round(v, 6) for v in (speed, x, y, appear, disappear)))
            )
        score = _occlusion(objects)
        if score < best_score:
            best, best_score = objects, score
        if score <= _MAX_HIDDEN_TIME:
            break
    return ClipSpec(seed=int(seed), background=background, objects=best)


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def frame_times(num_frames: int) -> np.ndarray:
    """Continuous clip times ``t_k = (k + 0.5) / T`` sampled by frame ``k`` of a ``T``-frame rendering."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    # Rounding makes equal times computed at different T (e.g. frame k of 12 and frame 3k+1 of 36) bit-identical.
    return np.round((np.arange(num_frames, dtype=np.float64) + 0.5) / num_frames, 12)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(height), int(width)


def object_tracks(spec: ClipSpec, times: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per object: ``visible`` (bool), centre ``x``, ``y`` (normalised) at ``times``. Useful for checks and probes."""
    times = np.asarray(times, dtype=np.float64)
    tracks = []
    for obj in spec.objects:
        x, y = obj.center(times)
        tracks.append({"visible": obj.visible(times), "x": x, "y": y})
    return tracks


def _shape_mask(shape: str, dx: torch.Tensor, dy: torch.Tensor, half: float) -> torch.Tensor:
    """Pixel mask from offsets to the centre, ``dx (n, 1, W)`` and ``dy (n, H, 1)``, broadcast to ``(n, H, W)``."""
    if shape == "square":
        return (dx.abs() < half) & (dy.abs() < half)
    if shape == "circle":
        return dx.square() + dy.square() < half * half
    if shape == "triangle":  # upward-pointing, base and height equal to the bounding box side
        return (dy.abs() < half) & (2 * dx.abs() < dy + half)
    raise ValueError(f"unknown shape {shape!r}")


def render_clip(spec: ClipSpec, num_frames: int, size: int | tuple[int, int]) -> torch.Tensor:
    """Render ``spec`` at times ``frame_times(num_frames)`` into a uint8 ``(T, 3, H, W)`` tensor.

    ``size`` is the side of a square frame or ``(height, width)``. Object sizes are relative to the shorter side, so
    shapes keep their aspect ratio.
    """
    height, width = _hw(size)
    times = frame_times(num_frames)
    background = torch.tensor(BACKGROUNDS[spec.background], dtype=torch.uint8)
    frames = background.view(1, 3, 1, 1).expand(num_frames, 3, height, width).clone()
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    chunk = max(1, _CHUNK_ELEMENTS // (height * width))
    for obj in spec.objects:
        index = np.flatnonzero(obj.visible(times))  # a contiguous range: visibility is one time interval
        if index.size == 0:
            continue
        first, last = int(index[0]), int(index[-1]) + 1
        cx, cy = obj.center(times[first:last])
        cx = torch.from_numpy(cx * width).float()
        cy = torch.from_numpy(cy * height).float()
        half = obj.extent * min(height, width) / 2
        for start in range(first, last, chunk):
            stop = min(start + chunk, last)
            dx = xs.view(1, 1, -1) - cx[start - first : stop - first].view(-1, 1, 1)
            dy = ys.view(1, -1, 1) - cy[start - first : stop - first].view(-1, 1, 1)
            mask = _shape_mask(obj.shape, dx, dy, half)
            for channel, value in enumerate(COLOURS[obj.colour]):
                frames[start:stop, channel].masked_fill_(mask, value)
    return frames


def write_clip(
    spec: ClipSpec,
    path: str | Path,
    num_frames: int = 12,
    size: int | tuple[int, int] = 64,
    fps: float = 1.0,
    crf: int | None = 12,
) -> Path:
    """Render ``spec`` and encode it as an H.264 / yuv420p mp4 ([`write_video`]). Height and width must be even.

    The default ``fps=1`` makes a 12-frame clip 12 seconds long, so a SmolVLM2 video processor sampling at its default
    1 fps still sees every frame. A low ``crf`` keeps the flat colours close to the palette.
    """
    return write_video(render_clip(spec, num_frames, size), path, fps=fps, crf=crf)


def render_spec_video(source: str, num_frames: int, size: int | None) -> Video:
    """The evaluation video loader of the synthetic world: the clip of ``source`` (a ``spec`` as JSON, the column
    [`make_dataset`] writes) rendered at ``num_frames`` frames, ``size`` px square (64 when ``None``).

    Rendering from the spec, rather than decoding an mp4, gives the same events at any frame count. Pass it to
    ``evaluate_adapters(..., video_loader=render_spec_video)`` or as
    ``frames2lora eval --video-loader peft_hyper.testing.world:render_spec_video``.
    """
    try:
        spec = ClipSpec.from_json(source)
    except (ValueError, KeyError, TypeError) as exc:  # a video path, or JSON that is not a spec
        raise UsageError(
            f"render_spec_video renders synthetic-world specs (a `spec` column); {str(source)[:80]!r} is not one "
            f"({type(exc).__name__}: {exc}). Long-world specs take peft_hyper.testing.long_world:render_long_spec_video; "
            "drop --video-loader to read video files."
        ) from exc
    frames = render_clip(spec, num_frames=num_frames, size=size or 64)
    return load_video(frames, num_frames=num_frames)


# --------------------------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------------------------


def _motion_phrase(obj: ObjectSpec) -> str:
    return "stays still" if obj.motion == "still" else f"moves {obj.motion}"


def caption(spec: ClipSpec) -> str:
    """Canonical caption: objects present from the start, then appear/disappear events in temporal order.

    Example: ``"a large red square moves left. then a small blue circle appears and moves up. then the red square
    disappears."``
    """
    sentences = [f"a {o.size} {o.name} {_motion_phrase(o)}." for o in spec.objects if o.appear == 0]
    for _, event, obj in spec.events():
        if event == "appear":
            sentence = f"a {obj.size} {obj.name} appears and {_motion_phrase(obj)}."
        else:
            sentence = f"the {obj.name} disappears."
        sentences.append(f"then {sentence}" if sentences else sentence)
    return " ".join(sentences)


def questions(spec: ClipSpec) -> list[QA]:
    """All unambiguous questions about ``spec``, with short canonical answers. Deterministic in ``spec.seed``.

    Objects are referred to by colour (unique within a clip) or by shape only when that shape is unique; choice order
    in multiple-choice questions is randomised so a no-video baseline is at chance.
    """
    rng = np.random.default_rng([spec.seed, 1])
    objects = spec.objects
    qas = [QA(T_COUNT, _NUMBER_WORDS[len(objects)], "count", T_COUNT)]
    shape_counts = Counter(o.shape for o in objects)
    for obj in objects:
        if shape_counts[obj.shape] == 1:
            qas.append(QA(T_COLOUR.format(shape=obj.shape), obj.colour, "attribute", T_COLOUR))
        qas.append(QA(T_SHAPE.format(colour=obj.colour), obj.shape, "attribute", T_SHAPE))
        qas.append(QA(T_SIZE.format(object=obj.name), obj.size, "attribute", T_SIZE, ("small", "large")))
        qas.append(QA(T_MOTION.format(object=obj.name), obj.motion, "motion", T_MOTION))
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if a.appear == b.appear:
                continue
            first = a if a.appear < b.appear else b
            pair = (a.name, b.name) if rng.random() < 0.5 else (b.name, a.name)
            qas.append(QA(T_FIRST.format(a=pair[0], b=pair[1]), first.name, "temporal", T_FIRST, pair))
    for obj in objects:
        later = [o for o in objects if o.appear > obj.appear]
        if later:
            nxt = min(later, key=lambda o: o.appear)
            qas.append(QA(T_AFTER.format(object=obj.name), nxt.name, "temporal", T_AFTER))
    return qas


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------

_SPLIT_NAMES = ("train", "validation", "test")


def clip_seed(seed: int, split: str, index: int) -> int:
    """Seed of clip ``index`` of ``split``: a 63-bit hash of ``(seed, split, index)``, so splits never share clips."""
    digest = hashlib.blake2b(f"peft-hyper/synthetic/{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _features() -> Features:
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "video": Value("string"),
            "spec": Value("string"),
            "prompt": Value("string"),
            "target": Value("string"),
            "task_type": Value("string"),
            "num_frames": Value("int32"),
            "size": Value("int32"),
            "clip_id": Value("string"),
            "template": Value("string"),
            "choices": List(Value("string")),
        }
    )


def make_dataset(
    num_clips: int,
    seed: int,
    num_frames: int = 12,
    size: int = 64,
    video_dir: str | Path | None = None,
    questions_per_clip: int | None = None,
    *,
    split: str = "train",
    fps: float = 1.0,
) -> Dataset:
    """Build a `datasets.Dataset` with one row per (clip, question) plus one caption row per clip.

    Clip seeds come from [`clip_seed`] (``seed``, ``split``, index). With ``video_dir`` every clip is written to
    ``video_dir/<clip_id>.mp4`` and ``video`` holds that path; otherwise ``video`` is ``None`` and clips can be rendered
    on the fly from ``spec`` with [`render_clip`]. ``questions_per_clip`` keeps a random subset of each clip's questions.
    Extra columns: ``clip_id``, ``template`` and ``choices`` (empty unless multiple choice).
    """
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for index in range(num_clips):
        spec = sample_spec(clip_seed(seed, split, index))
        clip_id = f"synth-{split}-s{seed}-{index:06d}"
        video = None
        if video_dir is not None:
            video = str(write_clip(spec, Path(video_dir) / f"{clip_id}.mp4", num_frames, size, fps=fps))
        qas = questions(spec)
        if questions_per_clip is not None and questions_per_clip < len(qas):
            keep = np.random.default_rng([spec.seed, 2]).choice(len(qas), size=questions_per_clip, replace=False)
            qas = [qas[i] for i in sorted(keep)]
        shared = {"clip_id": clip_id, "video": video, "spec": spec.to_json(), "num_frames": num_frames, "size": size}
        rows.append(
            {
                "id": f"{clip_id}-caption",
                "prompt": CAPTION_PROMPT,
                "target": caption(spec),
                "task_type": "caption",
                "template": CAPTION_PROMPT,
                "choices": [],
                **shared,
            }
        )
        for j, qa in enumerate(qas):
            rows.append(
                {
                    "id": f"{clip_id}-q{j}",
                    "prompt": qa.question,
                    "target": qa.answer,
                    "task_type": qa.kind,
                    "template": qa.template,
                    "choices": list(qa.choices),
                    **shared,
                }
            )
    features = _features()
    return Dataset.from_list([{name: row[name] for name in features} for row in rows], features=features)


def make_dataset_dict(
    train: int = 1000,
    validation: int = 100,
    test: int = 100,
    seed: int = 0,
    **kwargs: Any,
) -> DatasetDict:
    """Build a `datasets.DatasetDict` with ``train``/``validation``/``test`` splits of disjoint clip seeds.

    ``kwargs`` are forwarded to [`make_dataset`] (``num_frames``, ``size``, ``video_dir``, ``questions_per_clip``,
    ``fps``).
    """
    from datasets import DatasetDict

    counts = {"train": train, "validation": validation, "test": test}
    seeds = {split: {clip_seed(seed, split, i) for i in range(n)} for split, n in counts.items()}
    for i, a in enumerate(_SPLIT_NAMES):
        for b in _SPLIT_NAMES[i + 1 :]:
            assert not seeds[a] & seeds[b], f"clip seeds of {a} and {b} collide"
    return DatasetDict({split: make_dataset(n, seed, split=split, **kwargs) for split, n in counts.items()})


def to_jsonl_manifest(dataset: Dataset, path: str | Path) -> Path:
    """Write the reference (Frames2LoRA) manifest: one ``{id, video_path, prompt, task_type, target_text}`` per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in dataset:
            if row["video"] is None:
                raise ValueError(f"row {row['id']} has no video; build the dataset with video_dir=...")
            record = {
                "id": row["id"],
                "video_path": row["video"],
                "prompt": row["prompt"],
                "task_type": row["task_type"],
                "target_text": row["target"],
            }
            f.write(json.dumps(record) + "\n")
    return path


def answer_prior_accuracy(dataset: Dataset) -> dict[str, float]:
    """The "no video" floor: accuracy per QA kind of always giving the most frequent answer per (kind, template).

    For multiple-choice templates the baseline picks the most frequent choice *position*, which is what a text-only
    model can exploit. Fitted in-sample, so it is a slightly optimistic floor. Caption rows are ignored.
    """
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    names = ("task_type", "template", "target", "choices")
    columns = dataset.select_columns(list(names)).to_dict()
    for kind, template, target, choices in zip(*(columns[k] for k in names), strict=True):
        if kind == "caption":
            continue
        counts[kind, template][choices.index(target) if choices else target] += 1
    hits: Counter = Counter()
    totals: Counter = Counter()
    for (kind, _), counter in counts.items():
        hits[kind] += max(counter.values())
        totals[kind] += sum(counter.values())
    return {kind: hits[kind] / totals[kind] for kind in sorted(totals)}
