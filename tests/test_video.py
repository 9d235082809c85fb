"""Stage 1: video sources → sampled uint8 frames, and every bad-input error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from peft_hyper import (
    EmptyVideoError,
    InvalidFramesError,
    Video,
    VideoDecodeError,
    VideoNotFoundError,
    load_video,
)
from peft_hyper.testing_utils import make_test_frames
from peft_hyper.video import sample_frame_indices


def test_path_bytes_and_file_object_decode_identically(clips):
    from_path = load_video(clips[0], num_frames=5)
    with open(clips[0], "rb") as handle:
        data = handle.read()
    from_bytes = load_video(data, num_frames=5)
    from_file = load_video(io.BytesIO(data), num_frames=5)
    assert from_path.frames.shape == (5, 3, 48, 64)
    assert from_path.frames.dtype == torch.uint8
    assert torch.equal(from_path.frames, from_bytes.frames)
    assert torch.equal(from_path.frames, from_file.frames)
    assert from_path.metadata.total_num_frames == 16
    assert from_path.metadata.fps == pytest.approx(8.0)
    assert from_path.metadata.frames_indices == sample_frame_indices(16, 8.0, 5)


def test_sampling_by_count_and_by_fps(clips):
    assert load_video(clips[0], num_frames=16).num_frames == 16
    assert load_video(clips[0], num_frames=100).num_frames == 16  # never more than the video has
    by_fps = load_video(clips[0], num_frames=16, fps=2.0)  # 2 s of video at 2 fps
    assert by_fps.num_frames == 4
    timestamps = by_fps.metadata.timestamps
    assert timestamps == sorted(timestamps) and timestamps[-1] < 2.0


def test_frame_indices_are_spread_over_the_clip():
    assert sample_frame_indices(12, None, 4) == [1, 4, 7, 10]
    assert sample_frame_indices(3, None, 12) == [0, 1, 2]
    assert sample_frame_indices(100, 10.0, 64, fps=1.0) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]


def test_tensor_and_pil_inputs():
    frames = make_test_frames(num_frames=8, height=32, width=32, seed=3)
    video = load_video(frames, num_frames=4, source_fps=4.0)
    assert isinstance(video, Video) and video.frames.shape == (4, 3, 32, 32)
    assert torch.equal(video.frames, frames[[1, 3, 5, 7]])
    images = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    from_pil = load_video(images, num_frames=4, source_fps=4.0)
    assert torch.equal(from_pil.frames, video.frames)
    assert load_video(video) is video


def test_missing_file(tmp_path):
    with pytest.raises(VideoNotFoundError, match="No video file"):
        load_video(tmp_path / "nope.mp4")


def test_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video " * 100)
    with pytest.raises(VideoDecodeError, match="Could not open"):
        load_video(path)


def test_truncated_video(tmp_path, clips):
    data = Path(clips[1]).read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError):
        load_video(path, num_frames=16)


def test_corrupt_video_bytes(clips):
    data = bytearray(Path(clips[1]).read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # header and first half zeroed
    with pytest.raises(VideoDecodeError):
        load_video(bytes(data))


def test_empty_inputs(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyVideoError):
        load_video(empty)
    with pytest.raises(EmptyVideoError):
        load_video(b"")
    with pytest.raises(EmptyVideoError):
        load_video(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(EmptyVideoError):
        load_video([])


@pytest.mark.parametrize(
    "frames, message",
    [
        (torch.rand(4, 3, 8, 8), "uint8"),
        (torch.zeros(4, 8, 8, 3, dtype=torch.uint8), r"permute\(0, 3, 1, 2\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "shape"),
    ],
)
def test_wrong_frame_tensors(frames, message):
    with pytest.raises(InvalidFramesError, match=message):
        load_video(frames)


def test_wrong_input_types():
    with pytest.raises(InvalidFramesError):
        load_video(12345)
    with pytest.raises(InvalidFramesError):
        load_video([np.zeros((4, 4, 3), dtype=np.uint8)])
    sizes = [Image.new("RGB", (8, 8)), Image.new("RGB", (16, 8))]
    with pytest.raises(InvalidFramesError, match="same size"):
        load_video(sizes)
