"""Stage 1, property-based: whatever `load_video` is given, it returns a valid `Video` or raises a `PeftHyperError`.

Inputs are drawn by `hypothesis`: tensors of any dtype and shape (zero-sized ones included), random and truncated or
corrupted mp4 bytes, lists of PIL images of mixed modes and sizes, stray objects, and sampling arguments that are 0,
negative, NaN, infinite, huge or of the wrong type. Examples are few and the search derandomized, so the file runs in
seconds and the same way every time.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from peft_hyper import PeftHyperError, Video, load_video
from peft_hyper.testing.videos import make_test_frames, write_video
from peft_hyper.video import sample_frame_indices, sample_frames_by_time

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_DTYPES = [torch.uint8, torch.int8, torch.int64, torch.float32, torch.float16, torch.bool]
_PIL_MODES = ["RGB", "L", "P", "RGBA", "CMYK", "1", "I", "F", "LA", "I;16", "La", "YCbCr"]


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    path = write_video(make_test_frames(12, 16, 24), tmp_path_factory.mktemp("clip") / "clip.mp4", fps=6)
    return Path(path).read_bytes()


def _number(whole: bool) -> st.SearchStrategy[Any]:
    """A sampling argument: usually a plausible value, one time in five one a caller may pass by mistake (0,
    negative, NaN, infinite, huge, tiny, a bool, a string, None)."""
    usual = st.integers(1, 40) if whole else st.floats(0.1, 60.0)
    odd = st.one_of(
        st.sampled_from([0, -1, -0.5, 0.0, float("nan"), float("inf"), -float("inf"), 10**12, 1e308, 5e-324]),
        st.sampled_from([True, False, None, "4", 2.5 if whole else "2.5"]),
        st.integers(-3, 3),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    return st.integers(0, 4).flatmap(lambda pick: odd if pick == 0 else usual)


def _fps() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), _number(whole=False))


@st.composite
def frame_tensors(draw) -> torch.Tensor:
    """Half the time a uint8 `(T, 3, H, W)` tensor (sides from 0), otherwise any dtype and rank up to 5."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        shape = [draw(st.integers(0, 8)), 3, draw(st.integers(0, 8)), draw(st.integers(0, 8))]
        frames = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
        if layout == "channels_last":
            frames = frames.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            frames = frames.transpose(2, 3).contiguous().transpose(2, 3)
        return frames
    shape = [draw(st.integers(0, 5)) for _ in range(draw(st.integers(0, 5)))]
    values = torch.randint(0, 256, shape, generator=generator)
    dtype = draw(st.sampled_from(_DTYPES))
    return values.to(dtype) if dtype != torch.bool else values > 127


@st.composite
def pil_lists(draw) -> list[Image.Image]:
    count = draw(st.integers(0, 4))
    same_size = draw(st.booleans())
    size = (draw(st.integers(0, 6)), draw(st.integers(0, 6)))
    images = []
    for _ in range(count):
        mode = draw(st.sampled_from(_PIL_MODES))
        image_size = size if same_size else (draw(st.integers(0, 6)), draw(st.integers(0, 6)))
        color = draw(st.integers(0, 255)) if mode in ("L", "P", "1") else None
        images.append(Image.new(mode, image_size, color=color))
    return images


def _damaged(data: bytes, draw) -> bytes:
    """The clip cut short, or with a run of its bytes zeroed or replaced by random ones."""
    start = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["truncate", "zero", "scramble"]))
    if how == "truncate":
        return data[:start]
    stop = draw(st.integers(start, min(len(data), start + 512)))
    size = stop - start
    filler = bytes(size) if how == "zero" else draw(st.binary(min_size=size, max_size=size))
    return data[:start] + filler + data[stop:]


def _check_video(video: Video, source: Any, num_frames: int) -> None:
    frames, metadata = video.frames, video.metadata
    assert isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8 and frames.is_contiguous()
    assert frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[2] >= 1 and frames.shape[3] >= 1
    count = frames.shape[0]
    assert 1 <= count <= num_frames
    assert (metadata.height, metadata.width) == tuple(frames.shape[2:])
    indices = metadata.frames_indices
    assert len(indices) == count and indices == sorted(set(indices))
    assert indices[0] >= 0 and indices[-1] < metadata.total_num_frames
    timestamps = metadata.timestamps
    assert len(timestamps) == count and timestamps == sorted(timestamps)
    assert all(math.isfinite(t) and t >= 0 for t in timestamps)
    assert metadata.fps is None or (math.isfinite(metadata.fps) and metadata.fps > 0)
    assert metadata.duration is None or (math.isfinite(metadata.duration) and metadata.duration >= 0)
    if isinstance(source, torch.Tensor):
        assert metadata.total_num_frames == source.shape[0] and torch.equal(frames, source[indices])


def _load(source: Any, num_frames: Any, fps: Any, source_fps: Any) -> None:
    try:
        video = load_video(source, num_frames=num_frames, fps=fps, source_fps=source_fps)
    except PeftHyperError as exc:
        event(type(exc).__name__)  # the spread of outcomes shows with `pytest --hypothesis-show-statistics`
        return
    event("Video")
    _check_video(video, source, num_frames)


@SETTINGS
@given(
    source=frame_tensors(),
    num_frames=_number(whole=True),
    fps=_fps(),
    source_fps=_number(whole=False),
)
def test_any_tensor_gives_a_video_or_a_typed_error(source, num_frames, fps, source_fps):
    _load(source, num_frames, fps, source_fps)


@SETTINGS
@given(source=pil_lists(), num_frames=_number(whole=True), fps=_fps())
def test_any_pil_list_gives_a_video_or_a_typed_error(source, num_frames, fps):
    _load(source, num_frames, fps, 4.0)


@SETTINGS
@given(data=st.data(), num_frames=_number(whole=True), fps=_fps())
def test_any_bytes_give_a_video_or_a_typed_error(clip_bytes, data, num_frames, fps):
    kind = data.draw(st.sampled_from(["random", "damaged clip", "damaged clip as a file object", "whole clip"]))
    if kind == "random":
        source: Any = data.draw(st.binary(max_size=2048))
    elif kind == "whole clip":
        source = clip_bytes
    else:
        source = _damaged(clip_bytes, data.draw)
        if kind.endswith("file object"):
            source = io.BytesIO(source)
    _load(source, num_frames, fps, 1.0)


@SETTINGS
@given(
    source=st.one_of(
        st.integers(),
        st.text(max_size=8),
        st.none(),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.lists(st.integers(0, 255), max_size=3),
        st.builds(lambda n: np.zeros((n, 4, 4, 3), dtype=np.uint8), st.integers(0, 3)),
        st.builds(io.StringIO, st.text(max_size=16)),
    ),
    num_frames=_number(whole=True),
)
def test_any_other_object_gives_a_typed_error(source, num_frames):
    with pytest.raises(PeftHyperError):
        load_video(source, num_frames=num_frames)


def _index_rule(total: int, rate: float, num_frames: int, fps: float | None) -> list[int]:
    """The rule before sampling by time: slot centres in frame indices."""
    count = min(num_frames, total)
    if fps is not None:
        count = max(1, min(count, int(round(total / rate * fps))))
    return np.clip(np.floor((np.arange(count) + 0.5) * total / count).astype(int), 0, total - 1).tolist()


@SETTINGS
@given(
    total=st.integers(1, 2000),
    rate=st.one_of(st.floats(0.5, 240.0), st.sampled_from([24000 / 1001, 30000 / 1001, 60000 / 1001, 25.0, 30.0])),
    num_frames=st.integers(1, 300),
    fps=st.one_of(st.none(), st.floats(0.01, 60.0)),
)
def test_sampling_by_time_matches_index_sampling_at_a_constant_rate(total, rate, num_frames, fps):
    expected = _index_rule(total, rate, num_frames, fps)
    pts = np.arange(total) / rate  # frame i shown from i / rate seconds
    assert sample_frames_by_time(pts, total / rate, num_frames, fps) == expected
    assert sample_frame_indices(total, rate, num_frames, fps) == expected


@SETTINGS
@given(
    steps=st.lists(st.floats(0.0, 2.0), max_size=80),
    last=st.floats(0.0, 2.0),
    num_frames=st.integers(1, 50),
    fps=st.one_of(st.none(), st.floats(0.01, 60.0)),
)
def test_sampling_by_time_keeps_distinct_frames_in_order(steps, last, num_frames, fps):
    pts = np.cumsum([0.0, *steps])
    indices = sample_frames_by_time(pts, float(pts[-1] + last), num_frames, fps)
    assert 1 <= len(indices) <= num_frames and indices == sorted(set(indices))
    assert indices[0] >= 0 and indices[-1] < len(pts)
