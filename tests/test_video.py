"""Stage 1: video sources → sampled uint8 frames, and every bad-input error."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.video_utils import VideoMetadata

from peft_hyper import (
    EmptyVideoError,
    InvalidFramesError,
    Video,
    VideoDecodeError,
    VideoNotFoundError,
    load_video,
    open_video,
    split_video,
)
from peft_hyper.errors import InvalidSamplingError
from peft_hyper.testing.models import build_smolvlm_processor
from peft_hyper.testing.videos import make_test_frames, write_video
from peft_hyper.video import (
    TimedVideoMetadata,
    reference_frame_indices,
    sample_frame_indices,
    sample_frames_by_time,
    sample_frames_reference,
)


def test_path_bytes_and_file_object_decode_identically(clips):
    from_path = load_video(clips[0], num_frames=5)
    with open(clips[0], "rb") as handle:
        data = handle.read()
    from_bytes = load_video(data, num_frames=5)
    handle = io.BytesIO(data)
    from_file = load_video(handle, num_frames=5)
    with pytest.raises(VideoDecodeError, match=r"\.seek\(0\)"):
        load_video(handle, num_frames=5)  # read to its end by the first call
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
        (torch.zeros(4, 3, 8, 8, dtype=torch.int64), "uint8"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.bool), "uint8"),
        (torch.zeros(1, 4, 3, 8, 8, dtype=torch.uint8), r"frames\[i\]"),
        (torch.zeros(4, 3, 0, 0, dtype=torch.uint8), "empty images"),
        (torch.zeros(4, 3, 8, 0, dtype=torch.uint8), "empty images"),
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


def test_input_type_errors_say_what_to_pass(tmp_path):
    with pytest.raises(InvalidFramesError, match=r"torch\.from_numpy"):
        load_video(np.zeros((4, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(InvalidFramesError, match=r"torch\.stack"):
        load_video([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2)
    with pytest.raises(InvalidFramesError, match="'rb'"):
        load_video(io.StringIO("not a video"))
    text_file = tmp_path / "clip.mp4"
    text_file.write_bytes(b"\x00" * 64)
    with open(text_file) as handle, pytest.raises(InvalidFramesError, match="'rb'"):
        load_video(handle)


def test_path_edge_cases(tmp_path, clips):
    with pytest.raises(VideoNotFoundError, match="folder"):
        load_video(tmp_path)
    with pytest.raises(VideoNotFoundError):
        load_video(str(tmp_path / "bad\0name.mp4"))
    data = Path(clips[0]).read_bytes()
    expected = load_video(data, num_frames=3).frames
    assert torch.equal(load_video(bytearray(data), num_frames=3).frames, expected)
    assert torch.equal(load_video(memoryview(data), num_frames=3).frames, expected)


def test_tensor_layouts_are_accepted():
    frames = make_test_frames(num_frames=6, height=16, width=24, seed=5)
    expected = load_video(frames, num_frames=3).frames
    from_nhwc = frames.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # a non-contiguous view
    channels_last = frames.contiguous(memory_format=torch.channels_last)
    for variant in (from_nhwc, channels_last, frames[:, [2, 1, 0]][:, [2, 1, 0]]):
        video = load_video(variant, num_frames=3)
        assert torch.equal(video.frames, expected) and video.frames.is_contiguous()


def test_pil_frames_of_any_mode_become_rgb():
    modes = ["RGB", "L", "P", "RGBA", "CMYK", "1", "I", "F", "LA", "I;16"]
    images = [Image.new(mode, (12, 8)) for mode in modes]
    video = load_video(images, num_frames=len(modes))
    assert video.frames.shape == (len(modes), 3, 8, 12) and video.frames.dtype == torch.uint8
    for frame, image in zip(video.frames, images, strict=True):
        assert torch.equal(frame, torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
    with pytest.raises(InvalidFramesError, match="cannot be converted to RGB"):
        load_video([Image.new("RGB", (4, 4)), Image.new("La", (4, 4))])
    with pytest.raises(InvalidFramesError, match="empty images"):
        load_video([Image.new("RGB", (0, 0))])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -3}, "num_frames"),
        ({"num_frames": True}, "num_frames"),
        ({"num_frames": 2.0}, "num_frames"),
        ({"num_frames": None}, "num_frames"),
        ({"fps": 0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": float("inf")}, "fps"),
        ({"fps": True}, "fps"),
        ({"fps": "2"}, "fps"),
        ({"source_fps": 0}, "source_fps"),
        ({"source_fps": -30.0}, "source_fps"),
        ({"source_fps": float("nan")}, "source_fps"),
        ({"source_fps": float("inf")}, "source_fps"),
        ({"source_fps": None}, "source_fps"),
        ({"source_fps": True}, "source_fps"),
    ],
)
def test_invalid_sampling_arguments(clips, kwargs, name):
    for source in (clips[0], make_test_frames(num_frames=4, height=8, width=8)):
        with pytest.raises(InvalidSamplingError, match=rf"^{name} must") as info:
            load_video(source, **kwargs)
        assert isinstance(info.value, ValueError)  # as the plain ValueError raised before


def test_sampling_helpers_check_their_arguments():
    with pytest.raises(InvalidSamplingError, match="num_frames"):
        sample_frame_indices(10, None, 0)
    with pytest.raises(InvalidSamplingError, match="source frame rate"):
        sample_frame_indices(10, None, 4, fps=1.0)
    with pytest.raises(InvalidSamplingError, match="too small"):
        load_video(make_test_frames(num_frames=4, height=8, width=8), source_fps=1e-320)
    assert load_video(make_test_frames(num_frames=4, height=8, width=8), num_frames=np.int64(2)).num_frames == 2


def test_sample_frames_by_time():
    pts = [0.0, 0.1, 0.2, 1.0, 2.0, 3.0]  # shown until the next pts; the last one until 4.0
    assert sample_frames_by_time(pts, 4.0, num_frames=4) == [2, 3, 4, 5]  # slot centres 0.5, 1.5, 2.5, 3.5
    assert sample_frames_by_time(pts, 4.0, num_frames=6) == [2, 3, 4, 5]  # slots on the same frame keep it once
    assert sample_frames_by_time(pts, 4.0, num_frames=12, fps=0.5) == [3, 5]  # centres 1.0 and 3.0
    assert sample_frames_by_time([0.0, 1.0, 2.0, 3.0], 3.0, num_frames=4) == [0, 1, 2, 3]  # last frame of length 0
    assert sample_frames_by_time([5.0], 5.0, num_frames=3) == [0]
    with pytest.raises(EmptyVideoError):
        sample_frames_by_time([], 0.0, num_frames=3)


# --- sampling by presentation time ---------------------------------------------------------------------------------

# A variable-frame-rate clip: 1 s at 30 fps (frames 0-29), then 3 s at 2 fps (frames 30-35), 4 s in all. Frame k is a
# flat grey of level 20 + 6k, so a decoded frame tells which one it is.
VFR_PTS = [k / 30 for k in range(30)] + [1.0 + 0.5 * k for k in range(6)]


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory) -> str:
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command-line tool to write a variable-frame-rate video")
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    frames = np.stack([np.full((48, 64, 3), 20 + 6 * k, dtype=np.uint8) for k in range(len(VFR_PTS))])
    # Raw frames at a nominal 2 fps (so the last frame lasts 0.5 s) restamped with `setpts` on a 1/90000 time base,
    # muxed without B-frames (so each frame's duration is the step to the next pts).
    restamp = "settb=1/90000,setpts='if(lt(N,30),N*3000,90000+(N-30)*45000)'"  # in ticks of 1/90000 s
    command = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48"]
    command += ["-framerate", "2", "-i", "-", "-vf", restamp, "-fps_mode", "passthrough", "-enc_time_base", "1/90000"]
    command += ["-c:v", "libx264", "-bf", "0", "-pix_fmt", "yuv420p", "-video_track_timescale", "90000", str(path)]
    subprocess.run(command, input=frames.tobytes(), check=True)
    return str(path)


def _frame_numbers(video: Video) -> list[int]:
    """Which frame of the variable-frame-rate clip each sampled frame is, read from its grey level."""
    return ((video.frames.float().mean(dim=(1, 2, 3)) - 20) / 6).round().int().tolist()


@pytest.fixture(scope="module")
def processor():
    return build_smolvlm_processor()


def _prompt_timestamps(processor, video: Video, metadata: VideoMetadata | None = None) -> list[str]:
    """The "Frame from MM:SS" labels that SmolVLM's processor writes for `video` (through `build_video_inputs`)."""
    from peft_hyper.inputs import build_video_inputs

    video = Video(frames=video.frames, metadata=metadata or video.metadata)
    text = processor.tokenizer.decode(build_video_inputs(processor, [video], "Describe.")["input_ids"][0])
    return re.findall(r"Frame from (\d\d:\d\d)", text)


def test_vfr_clip_is_variable_rate(vfr_clip):
    from torchcodec.decoders import VideoDecoder

    batch = VideoDecoder(vfr_clip).get_frames_at(list(range(len(VFR_PTS))))
    assert batch.pts_seconds.tolist() == pytest.approx(VFR_PTS)
    assert batch.duration_seconds[-1].item() == pytest.approx(0.5)
    if shutil.which("ffprobe"):
        entries = "stream=r_frame_rate,avg_frame_rate"
        probe = ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", entries, vfr_clip]
        output = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
        rates = dict(re.findall(r"(\w+_frame_rate)=(\S+)", output))
        assert rates["r_frame_rate"] != rates["avg_frame_rate"]


def test_variable_frame_rate_video_is_sampled_by_presentation_time(vfr_clip):
    video = load_video(vfr_clip, num_frames=8)
    numbers = _frame_numbers(video)
    assert numbers == video.metadata.frames_indices == [7, 22, 30, 31, 32, 33, 34, 35]
    slot = 4.0 / 8
    for k, index in enumerate(numbers):  # each kept frame is the one on screen at its slot's centre
        centre = (k + 0.5) * slot
        shown_until = VFR_PTS[index + 1] if index + 1 < len(VFR_PTS) else 4.0
        assert VFR_PTS[index] <= centre < shown_until
        assert abs(VFR_PTS[index] - centre) <= slot / 2
    assert sum(VFR_PTS[index] < 1.0 for index in numbers) == 2  # by frame index it was 7 of the 8
    assert isinstance(video.metadata, TimedVideoMetadata)
    assert video.metadata.timestamps == pytest.approx([VFR_PTS[index] for index in numbers])
    assert video.metadata.duration == pytest.approx(4.0)

    by_fps = load_video(vfr_clip, num_frames=12, fps=1.0)  # 4 s at 1 fps: slot centres 0.5, 1.5, 2.5, 3.5
    assert _frame_numbers(by_fps) == by_fps.metadata.frames_indices == [15, 31, 33, 35]
    assert by_fps.metadata.timestamps == pytest.approx([0.5, 1.5, 2.5, 3.5])

    dense = load_video(vfr_clip, num_frames=16)  # 0.25 s slots: two fall on each 0.5 s frame, which is kept once
    assert _frame_numbers(dense) == dense.metadata.frames_indices
    assert dense.num_frames == 10 and dense.metadata.frames_indices[-6:] == [30, 31, 32, 33, 34, 35]


def test_vfr_prompt_carries_the_real_times(vfr_clip, processor):
    video = load_video(vfr_clip, num_frames=8)
    real = [f"00:{int(VFR_PTS[index]):02d}" for index in video.metadata.frames_indices]
    assert real == ["00:00", "00:00", "00:01", "00:01", "00:02", "00:02", "00:03", "00:03"]
    assert _prompt_timestamps(processor, video) == real
    fields = {name: getattr(video.metadata, name) for name in VideoMetadata.__dataclass_fields__}
    by_index = _prompt_timestamps(processor, video, VideoMetadata(**fields))  # `index / average fps`, as before
    assert by_index != real


def test_timestamps_survive_without_a_frame_index(vfr_clip, clips, monkeypatch):
    """With a torchcodec that has no `Demuxer` (< 0.17) frames are sampled by index, still stamped with real pts."""
    import peft_hyper.video as video_module

    with_index = load_video(clips[0], num_frames=5)
    monkeypatch.setattr(video_module, "_presentation_times", lambda source: None)
    without_index = load_video(clips[0], num_frames=5)
    assert without_index.metadata.frames_indices == with_index.metadata.frames_indices
    assert torch.equal(without_index.frames, with_index.frames)
    video = load_video(vfr_clip, num_frames=8)
    assert video.metadata.timestamps == pytest.approx([VFR_PTS[index] for index in _frame_numbers(video)])


def _index_rule(total: int, source_fps: float, num_frames: int, fps: float | None) -> list[int]:
    """The sampling rule before sampling by time: slot centres in frame indices, `index / fps` seconds."""
    count = min(num_frames, total)
    if fps is not None:
        count = max(1, min(count, int(round(total / source_fps * fps))))
    slots = (np.arange(count) + 0.5) * total / count
    return np.clip(np.floor(slots).astype(int), 0, total - 1).tolist()


@pytest.mark.parametrize("rate, total", [(8, 16), (30, 95), (30000 / 1001, 61), (25, 7)])
def test_constant_rate_video_keeps_its_frames_and_prompt(tmp_path, processor, rate, total):
    path = write_video(make_test_frames(total, 32, 32, seed=total), tmp_path / "clip.mp4", fps=rate)
    every_frame = load_video(path, num_frames=total)
    assert every_frame.metadata.frames_indices == list(range(total))
    for num_frames, fps in [(1, None), (4, None), (7, None), (12, None), (64, None), (12, 1.0), (12, 3.0), (5, 7.5)]:
        video = load_video(path, num_frames=num_frames, fps=fps)
        indices = _index_rule(total, video.metadata.fps, num_frames, fps)
        assert video.metadata.frames_indices == indices
        assert torch.equal(video.frames, every_frame.frames[indices])
        fields = {name: getattr(video.metadata, name) for name in VideoMetadata.__dataclass_fields__}
        assert _prompt_timestamps(processor, video) == _prompt_timestamps(processor, video, VideoMetadata(**fields))


def test_no_uint8_frame_normalises_to_a_smolvlm_padding_frame(processor):
    """SmolVLM drops frames whose `pixel_values` are all exactly 0 as padding. With mean = std = 0.5 that needs the
    level 127.5, which a uint8 frame cannot have: mid-grey 127 and 128 become -1/255 and +1/255."""
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1).expand(256, 3, 48, 64)
    checkerboard = torch.full((1, 3, 64, 64), 127, dtype=torch.uint8)
    checkerboard[..., ::2, ::2] = checkerboard[..., 1::2, 1::2] = 128  # 127.5 on average, were it resized in floats
    for frames in (levels, checkerboard):
        inputs = processor.video_processor(videos=[frames.contiguous()], do_sample_frames=False, return_tensors="pt")
        pixel_values = inputs["pixel_values"][0]
        assert not (pixel_values == 0).flatten(1).all(dim=1).any()
        assert pixel_values.abs().min().item() == pytest.approx(1 / 255)


# --- the reference's sampling rule ----------------------------------------------------------------------------------


def test_reference_rule_is_smolvlms_video_processor_rule_at_a_constant_rate():
    """Index for index what `SmolVLMVideoProcessor.sample_frames` gives (the reference trained with it), both as an
    index rule and by presentation time, on clips from 1 frame to 5 minutes, short and long, at common rates."""
    from transformers import SmolVLMVideoProcessor

    sampler = SmolVLMVideoProcessor()
    for rate in (1.0, 7.5, 23.976, 25.0, 29.97, 60.0):
        for total in [*range(1, 40), 70, 119, 120, 121, 420, 421, 422, 899, 4001, 18000]:
            for num_frames, fps in ((12, 1.0), (4, 1.0), (12, 2.0), (8, 0.5)):
                metadata = VideoMetadata(total_num_frames=total, fps=rate, duration=total / rate)
                expected = sampler.sample_frames(metadata, num_frames=num_frames, fps=fps).tolist()
                assert reference_frame_indices(total, rate, num_frames, fps) == expected
                pts = np.arange(total) / rate
                assert sample_frames_reference(pts, total / rate, num_frames, fps) == expected, (rate, total)


def test_reference_rule_examples():
    # 20 s at 10 fps: longer than 14 s, so seconds 0-1 and 19-20 are skipped; 12 frames from 10 to 190, both ends
    assert reference_frame_indices(200, 10.0) == [10, 26, 42, 59, 75, 91, 108, 124, 140, 157, 173, 190]
    # 10 s: 10 frames at 1 fps from the first frame to the last, nothing skipped
    assert reference_frame_indices(100, 10.0) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    # exactly 14 s is not longer than 2 + 12: nothing skipped
    assert reference_frame_indices(140, 10.0)[0] == 0 and reference_frame_indices(141, 10.0)[0] == 10
    assert reference_frame_indices(3, 30.0) == [0]  # 0.1 s: one frame
    with pytest.raises(EmptyVideoError):
        sample_frames_reference([], 0.0)


def test_load_video_samples_a_long_file_by_the_reference_rule(tmp_path):
    path = write_video(make_test_frames(64, 16, 16), tmp_path / "long.mp4", fps=4)  # 16 s
    video = load_video(path, num_frames=12, sampling="reference")  # fps: 1 (the reference's) when not given
    assert (
        video.metadata.frames_indices
        == reference_frame_indices(64, 4.0)
        == [4, 9, 14, 19, 24, 29, 34, 39, 44, 49, 54, 60]
    )
    assert video.metadata.timestamps == pytest.approx([index / 4 for index in video.metadata.frames_indices])
    frames = make_test_frames(num_frames=64, height=16, width=16)
    from_tensor = load_video(frames, num_frames=12, source_fps=4.0, sampling="reference")
    assert from_tensor.metadata.frames_indices == video.metadata.frames_indices
    with pytest.raises(InvalidSamplingError, match="sampling must be one of"):
        load_video(path, sampling="smart")


def test_reference_rule_on_a_variable_frame_rate_video_is_by_presentation_time(vfr_clip):
    video = load_video(vfr_clip, num_frames=12, sampling="reference")
    # 4 s: round(4 x 1 fps) = 4 frames, nothing skipped, times linspace(0, 3.5) = 0, 1.17, 2.33, 3.5 s
    assert _frame_numbers(video) == video.metadata.frames_indices == [0, 30, 32, 35]
    assert video.metadata.timestamps == pytest.approx([0.0, 1.0, 2.0, 3.5])
    by_index = reference_frame_indices(len(VFR_PTS), len(VFR_PTS) / 4.0)  # the literal rule at the average rate
    assert by_index == [0, 11, 23, 35]  # three of four frames from the first second


@pytest.fixture
def decoder_calls(monkeypatch) -> list[list[int]]:
    """The source indices of every decoder call, in order."""
    from torchcodec.decoders import VideoDecoder

    calls: list[list[int]] = []
    get_frames_at = VideoDecoder.get_frames_at

    def recording(self, indices, *args, **kwargs):
        calls.append(list(indices))
        return get_frames_at(self, indices, *args, **kwargs)

    monkeypatch.setattr(VideoDecoder, "get_frames_at", recording)
    return calls


def _same_video(got: Video, expected: Video) -> None:
    assert torch.equal(got.frames, expected.frames)
    assert got.metadata.timestamps == expected.metadata.timestamps
    assert got.metadata.frames_indices == expected.metadata.frames_indices
    for name in ("total_num_frames", "fps", "width", "height", "duration", "video_backend"):
        assert getattr(got.metadata, name) == getattr(expected.metadata, name), name


def test_open_video_samples_like_load_video_and_decodes_only_what_is_read(vfr_clip, decoder_calls):
    from torchcodec.decoders import VideoDecoder

    video = load_video(vfr_clip, num_frames=8)
    decoder_calls.clear()
    reader = open_video(vfr_clip, num_frames=8)
    assert decoder_calls == []  # sampling needs the packet scan only
    assert reader.num_frames == 8 and reader.metadata.timestamps == video.metadata.timestamps
    decoder_pts = VideoDecoder(vfr_clip).get_frames_at(video.metadata.frames_indices).pts_seconds.double().tolist()
    assert reader.metadata.timestamps == decoder_pts  # the scan's times are the decoder's, exactly (first frame at 0)
    decoder_calls.clear()
    part = reader.read(2, 5)
    assert decoder_calls == [video.metadata.frames_indices[2:5]]
    assert torch.equal(part.frames, video.frames[2:5])
    assert part.metadata.timestamps == video.metadata.timestamps[2:5]  # times in the whole video
    assert part.metadata.duration == video.metadata.duration
    _same_video(reader.read(), video)
    with pytest.raises(InvalidSamplingError, match="0 <= start < stop <= 8"):
        reader.read(5, 5)


def test_segments_of_a_reader_are_read_one_at_a_time(clips, decoder_calls):
    video = load_video(clips[0], num_frames=16)
    decoder_calls.clear()
    lazy = split_video(open_video(clips[0], num_frames=16), 6)
    assert [segment.num_frames for segment in lazy] == [6, 6, 4] and decoder_calls == []
    for segment, expected in zip(lazy, split_video(video, 6), strict=True):
        assert segment.metadata.timestamps == expected.metadata.timestamps
        _same_video(segment.read(), expected)
    assert decoder_calls == [list(range(0, 6)), list(range(6, 12)), list(range(12, 16))]
    assert torch.equal(lazy[1].read(1, 3).frames, video.frames[7:9])


def test_segments_of_given_lengths_cut_where_told_and_cover_every_frame(clips):
    video = load_video(clips[0], num_frames=16)
    for source in (video, open_video(clips[0], num_frames=16)):
        shots = split_video(source, [5, 3, 8])  # e.g. the shots a shot detector found
        assert [segment.num_frames for segment in shots] == [5, 3, 8]
        assert [s.metadata.timestamps for s in shots] == [
            video.metadata.timestamps[a:b] for a, b in ((0, 5), (5, 8), (8, 16))
        ]
    for bad, match in (([5, 3], "add up to 8"), ([5, 0, 11], ">= 1"), ([], ">= 1"), ([4.0, 12], ">= 1")):
        with pytest.raises(InvalidSamplingError, match=match):
            split_video(video, bad)


def test_readers_of_frames_in_memory_slice_them(clips):
    frames = make_test_frames(num_frames=8, height=32, width=32, seed=3)
    reader = open_video(frames, num_frames=4, source_fps=4.0)
    _same_video(reader.read(), load_video(frames, num_frames=4, source_fps=4.0))
    assert torch.equal(reader.read(1, 3).frames, frames[[3, 5]])
    video = load_video(clips[0], num_frames=5)
    _same_video(open_video(video).read(), video)
    assert open_video(reader) is reader and torch.equal(load_video(reader).frames, reader.read().frames)


def test_open_video_raises_the_errors_of_load_video(tmp_path, clips):
    with pytest.raises(VideoNotFoundError):
        open_video(tmp_path / "nope.mp4")
    with pytest.raises(InvalidSamplingError):
        open_video(clips[0], num_frames=0)
    with pytest.raises(InvalidFramesError):
        open_video(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    data = Path(clips[1]).read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError):  # when opened, or at the latest when its broken frames are read
        open_video(path, num_frames=16).read()


def test_a_reader_without_a_frame_index_decodes_when_opened(clips, monkeypatch, decoder_calls):
    """torchcodec < 0.17 (no packet scan): a frame's time is known once it is decoded, so opening decodes."""
    import peft_hyper.video as video_module

    expected = load_video(clips[0], num_frames=5)
    monkeypatch.setattr(video_module, "_presentation_times", lambda source: None)
    decoder_calls.clear()
    reader = open_video(clips[0], num_frames=5)
    assert decoder_calls == [expected.metadata.frames_indices]
    _same_video(reader.read(), expected)
    assert len(decoder_calls) == 1
