"""Stage 1 of the data flow: a video (path, bytes, file object, frame tensor or PIL images) → sampled uint8 frames.

Decoding is torchcodec's. Frames are sampled by presentation time, so a variable-frame-rate video is sampled evenly in
time, not in frame count, by one of two rules (`FRAME_SAMPLING`): `"uniform"` (one frame at the centre of each of
equal time slots) or `"reference"` (the rule the reference Frames2LoRA checkpoints were trained with: SmolVLM's video
processor, at most 12 frames at 1 fps, the first and last second skipped on long clips, both ends included). The frames come with a `TimedVideoMetadata` (a `transformers` `VideoMetadata`) whose
`timestamps` are the sampled frames' presentation times; `SmolVLMProcessor` writes them into the prompt
("Frame from MM:SS").

`open_video` samples without decoding: it returns a `VideoReader` that knows which frames it will give and when each is
shown, and decodes frames only when they are read, so a long video can be read a chunk or a segment at a time (memory
of one chunk, however long the video). `load_video` is `open_video(...).read()`: every sampled frame at once.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from transformers.video_utils import VideoMetadata

from .errors import EmptyVideoError, InvalidFramesError, InvalidSamplingError, VideoDecodeError, VideoNotFoundError

VideoInput = Union[str, os.PathLike, bytes, io.IOBase, torch.Tensor, Sequence[Any], "Video", "VideoReader"]

_INPUT_KINDS = "a path, bytes, a binary file object, a uint8 tensor (T, 3, H, W) or a list of PIL images"

FRAME_SAMPLING = ("uniform", "reference")
"""Frame-sampling rules of `load_video`: `"uniform"` (slot centres) and `"reference"` (the reference's rule)."""
REFERENCE_FPS = 1.0
"""The frame rate the reference samples at when none is given."""
REFERENCE_SKIP_SECONDS = 1.0
"""Seconds the reference skips at each end of a clip longer than `2 * skip + num_frames / fps`."""


@dataclass
class TimedVideoMetadata(VideoMetadata):
    """`VideoMetadata` that carries each sampled frame's presentation time.

    `VideoMetadata.timestamps` is `frames_indices / fps`, which holds only at a constant frame rate.
    `SmolVLMProcessor.replace_video_token` writes `metadata.timestamps` into the prompt, so this subclass returns the
    real times instead. transformers keeps a list of `VideoMetadata` objects as they are (it rebuilds only dicts), so
    pass `video_metadata` as a list, one entry per video, as `build_video_inputs` does.

    Attributes:
        frames_timestamps: seconds from the first frame of the video to each sampled frame, parallel to
            `frames_indices`; `None` falls back to `frames_indices / fps`.
    """

    frames_timestamps: list[float] | None = None

    @property
    def timestamps(self) -> list[float]:
        "Presentation times of the sampled frames in seconds, from the first frame of the video."
        if self.frames_timestamps is None:
            return super().timestamps
        return list(self.frames_timestamps)


@dataclass
class Video:
    """Sampled frames of one video.

    Attributes:
        frames: `(T, 3, H, W)` uint8 RGB frames.
        metadata: the source's frame count, average fps and duration, and the indices and presentation times of the
            sampled frames (a `TimedVideoMetadata` from `load_video`).
    """

    frames: torch.Tensor
    metadata: VideoMetadata

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


class VideoReader:
    """The sampled frames of one video, decoded when they are read (`open_video`).

    A reader holds what sampling decided — which frames, and when each is shown — and a way to decode them, but no
    frames, so its memory does not grow with the video. `read(start, stop)` decodes sampled frames `start..stop-1`
    only; `split_video(reader, n)` cuts it into readers of consecutive segments without decoding anything.

    Attributes:
        metadata: as `Video.metadata` for all of the reader's frames: their source indices (`frames_indices`) and
            presentation times from the start of the whole video (`timestamps`), the source's frame count, fps and
            duration.
    """

    def __init__(
        self,
        metadata: VideoMetadata,
        decode: Callable[[list[int]], torch.Tensor],
        positions: range,
    ) -> None:
        """Readers come from `open_video` and `split_video`.

        Args:
            metadata: the metadata of the frames at `positions`.
            decode: positions among the sampled frames of the whole video → those frames, `(n, 3, H, W)` uint8.
            positions: where this reader's frames are among the sampled frames of the whole video.
        """
        self.metadata = metadata
        self._decode = decode
        self._positions = positions

    @property
    def num_frames(self) -> int:
        return len(self._positions)

    def read(self, start: int = 0, stop: int | None = None) -> Video:
        """Decode sampled frames `start..stop-1` (all by default): a `Video` `(stop - start, 3, H, W)` uint8 whose
        metadata keeps the frames' times from the start of the whole video.

        Raises:
            InvalidSamplingError: no frame in `start..stop-1`.
            VideoDecodeError: the file cannot be decoded there (truncated or corrupt).
        """
        start, stop, _ = slice(start, stop).indices(self.num_frames)
        if start >= stop:
            raise InvalidSamplingError(
                f"Cannot read frames {start}..{stop - 1} of a reader of {self.num_frames} frames; pass "
                f"0 <= start < stop <= {self.num_frames}."
            )
        frames = self._decode(list(self._positions[start:stop]))
        metadata = _clip_metadata(self.metadata, start, stop)
        if (metadata.width, metadata.height) != (frames.shape[-1], frames.shape[-2]):
            # what the decoder returns wins (as when frames were always decoded at once)
            metadata = replace(metadata, width=frames.shape[-1], height=frames.shape[-2])
        return Video(frames=frames, metadata=metadata)

    def clip(self, start: int, stop: int) -> VideoReader:
        """A reader of sampled frames `start..stop-1`, nothing decoded; times stay those in the whole video."""
        return VideoReader(_clip_metadata(self.metadata, start, stop), self._decode, self._positions[start:stop])

    def __repr__(self) -> str:
        return f"VideoReader(num_frames={self.num_frames}, timestamps={_short(self.metadata.timestamps)})"


def split_video(video: Video | VideoReader, segment_frames: int | Sequence[int]) -> list[Video] | list[VideoReader]:
    """Cut the sampled frames of `video` into consecutive, non-overlapping segments: of `segment_frames` frames each
    (the last may be shorter), or, for a sequence, of those frame counts in order (e.g. the shots a shot detector
    found), which must add up to the video's frames.

    Each segment keeps its frames' presentation times from the start of the whole video, and the whole video's
    duration, so that the prompt SmolVLM's processor writes for a segment ("Frame from MM:SS", "… frames from a MM:SS
    video") says where in the video it is. A `Video` gives `Video`s (views of its frames); a `VideoReader` gives
    `VideoReader`s, and nothing is decoded until a segment is read.
    """
    if isinstance(segment_frames, Sequence):
        lengths = list(segment_frames)
        if not lengths or not all(_is_count(n) for n in lengths):
            raise InvalidSamplingError(
                f"segment_frames must be whole numbers >= 1, one per segment; got {list(segment_frames)!r}."
            )
        if sum(lengths) != video.num_frames:
            raise InvalidSamplingError(
                f"The segment lengths add up to {sum(lengths)} frames but the video has {video.num_frames} sampled "
                "frames; give one length per segment covering every frame (sample the video first, e.g. at 1 fps)."
            )
    elif _is_count(segment_frames):
        full, rest = divmod(video.num_frames, segment_frames)
        lengths = [segment_frames] * full + ([rest] if rest else [])
    else:
        raise InvalidSamplingError(f"segment_frames must be a whole number >= 1, got {segment_frames!r}.")
    bounds = list(itertools.pairwise([0, *itertools.accumulate(lengths)]))
    if isinstance(video, VideoReader):
        return [video.clip(start, stop) for start, stop in bounds]
    return [
        Video(frames=video.frames[start:stop], metadata=_clip_metadata(video.metadata, start, stop))
        for start, stop in bounds
    ]


def _clip_metadata(meta: VideoMetadata, start: int, stop: int) -> TimedVideoMetadata:
    """The metadata of sampled frames `start..stop-1`: their indices and times; the whole video's length and size."""
    times = list(meta.timestamps)
    indices = list(meta.frames_indices) if meta.frames_indices is not None else list(range(len(times)))
    return TimedVideoMetadata(
        total_num_frames=meta.total_num_frames,
        fps=meta.fps,
        width=meta.width,
        height=meta.height,
        duration=meta.duration,
        video_backend=meta.video_backend,
        frames_indices=indices[start:stop],
        frames_timestamps=times[start:stop],
    )


def _short(values: Sequence[float]) -> str:
    values = [round(float(v), 3) for v in values]
    return str(values) if len(values) <= 4 else f"[{values[0]}, {values[1]}, ..., {values[-1]}]"


def sample_frame_indices(
    total_num_frames: int, source_fps: float | None, num_frames: int, fps: float | None = None
) -> list[int]:
    """Indices of the frames to keep from a constant-rate video (frame `i` shown at `i / source_fps` seconds).

    The same rule as `sample_frames_by_time`: `num_frames` time slots over the clip, or one every `1/fps` seconds
    capped at `num_frames` (uniform over the whole clip when the cap applies); each slot keeps the frame shown at its
    centre. `source_fps` is needed only with `fps`.
    """
    num_frames, fps = _check_sampling(num_frames, fps)
    if total_num_frames < 1:
        raise EmptyVideoError("The video has no frames. Pass a video with at least one decodable frame.")
    duration = None
    if fps is not None:
        if source_fps is None or not _is_positive_real(source_fps):
            raise InvalidSamplingError(
                f"Sampling by fps needs the source frame rate, got {source_fps!r}; pass `num_frames` with `fps=None`."
            )
        duration = total_num_frames / source_fps
    count = _frame_count(num_frames, total_num_frames, duration, fps)
    # Time is proportional to the index at a constant rate, so the slots are cut in frame units.
    return _frames_at_slot_centres(np.arange(total_num_frames, dtype=np.float64), float(total_num_frames), count)


def sample_frames_by_time(
    pts_seconds: Sequence[float] | np.ndarray | torch.Tensor,
    end_seconds: float,
    num_frames: int,
    fps: float | None = None,
) -> list[int]:
    """Indices of the frames to keep, chosen by presentation time.

    The clip runs from the first frame's pts to `end_seconds` (when the last frame stops being shown). It is cut into
    `count` equal time slots, `count = min(num_frames, number of frames)` or, with `fps`, `round(duration * fps)` capped
    by that (at least 1), and each slot keeps the frame on screen at its centre: the last frame whose pts is at or
    before it. Slots that fall on the same frame (a frame shown longer than a slot) keep it once, so fewer than `count`
    frames may come back.

    Args:
        pts_seconds: `(N,)` presentation times of all frames, in presentation order.
        end_seconds: end of the last frame (its pts plus its duration); at or before its pts, the median step
            between frames is used as its duration.
        num_frames: the number of frames to sample (an upper bound when `fps` is given).
        fps: sample one frame every `1/fps` seconds instead of uniformly.

    Returns:
        Sorted, distinct indices into `pts_seconds`.
    """
    num_frames, fps = _check_sampling(num_frames, fps)
    pts, end = _clip_timing(pts_seconds, end_seconds)
    count = _frame_count(num_frames, pts.size, end - float(pts[0]), fps)
    return _frames_at_slot_centres(pts, end, count)


def _clip_timing(
    pts_seconds: Sequence[float] | np.ndarray | torch.Tensor, end_seconds: float
) -> tuple[np.ndarray, float]:
    """`(N,)` float64 pts and the end of the last frame (see `sample_frames_by_time`)."""
    pts = np.asarray(pts_seconds, dtype=np.float64).reshape(-1)
    if pts.size == 0:
        raise EmptyVideoError("The video has no frames. Pass a video with at least one decodable frame.")
    end = float(end_seconds)
    if not end > pts[-1]:  # the last frame has no duration (some muxers write 0): give it the typical frame step
        steps = np.diff(pts)
        steps = steps[steps > 0]
        end = float(pts[-1]) + (float(np.median(steps)) if steps.size else 0.0)
    return pts, end


def _frame_count(num_frames: int, total: int, duration: float | None, fps: float | None) -> int:
    count = min(num_frames, total)
    if fps is not None and duration is not None:
        wanted = duration * fps  # may overflow to inf for a huge fps: then the cap does not apply
        if wanted < count:
            count = max(1, int(round(wanted)))
    return count


def _frames_at_slot_centres(starts: np.ndarray, end: float, count: int) -> list[int]:
    begin = float(starts[0])
    span = max(end - begin, 0.0)
    centres = begin + (np.arange(count) + 0.5) * span / count
    return _frames_on_screen(starts, centres, span)


def _frames_on_screen(starts: np.ndarray, times: np.ndarray, span: float) -> list[int]:
    """Sorted, distinct indices of the frames on screen at `times` (the last frame starting at or before each)."""
    # A billionth of the mean frame period: where a time is exactly a frame's start, float rounding must not pick the
    # frame before (at a constant rate the slot centres give the old `floor((k + 0.5) * N / count)` index rule).
    tolerance = 1e-9 * span / starts.size
    indices = np.searchsorted(starts, times + tolerance, side="right") - 1
    return np.unique(np.clip(indices, 0, starts.size - 1)).tolist()


def reference_frame_indices(
    total_num_frames: int, source_fps: float, num_frames: int = 12, fps: float = REFERENCE_FPS
) -> list[int]:
    """The reference's rule on a constant-rate video (frame `i` shown at `i / source_fps`): index for index what
    `SmolVLMVideoProcessor.sample_frames` (transformers 5, `skip_secs=1`) returns, as the reference trained with it.

    - `count = round(duration * fps)`, capped at `num_frames`, at least 1, with `duration = total / source_fps`;
    - when `duration - 2 * skip > num_frames * fps` (longer than 14 s for 12 frames at 1 fps) the range runs from
      frame `int(skip * source_fps)` to frame `int(total - skip * source_fps)`, otherwise from the first to the last;
    - `count` indices by `linspace` over the range, both ends included, truncated to whole frames; repeats kept once.
    """
    num_frames, fps = _check_sampling(num_frames, fps)
    if total_num_frames < 1:
        raise EmptyVideoError("The video has no frames. Pass a video with at least one decodable frame.")
    if not _is_positive_real(source_fps):
        raise InvalidSamplingError(f"The reference's sampling needs the source frame rate, got {source_fps!r}.")
    duration = total_num_frames / source_fps
    count = _reference_count(num_frames, duration, fps)
    start, stop = 0, total_num_frames - 1
    if _reference_skips(duration, num_frames, fps):
        skip = REFERENCE_SKIP_SECONDS * source_fps
        start, stop = int(skip), min(int(total_num_frames - skip), total_num_frames - 1)
        if start >= stop:
            start, stop = 0, total_num_frames - 1
    return np.unique(np.linspace(start, stop, count, dtype=int)).tolist()


def sample_frames_reference(
    pts_seconds: Sequence[float] | np.ndarray | torch.Tensor,
    end_seconds: float,
    num_frames: int = 12,
    fps: float = REFERENCE_FPS,
) -> list[int]:
    """The reference's rule ([`reference_frame_indices`]) by presentation time, for any frame timing.

    The clip runs from the first frame's pts to `end_seconds` (`duration` = the difference). `count` is as in the
    index rule. The range starts at the frame on screen `skip` seconds after the first frame and stops at the frame on
    screen `skip` seconds before the end when the clip is long enough (else the first and the last frame); `count`
    times spread by `linspace` from the first of these frames' pts to the last's, both included, each keep the frame on
    screen then; repeats are kept once. At a constant frame rate this is the index rule (tested).

    Args:
        pts_seconds: `(N,)` presentation times of all frames, in presentation order.
        end_seconds: end of the last frame (its pts plus its duration); at or before its pts, the median step
            between frames is used as its duration.
        num_frames: the most frames to sample (12 in the reference).
        fps: the target rate (1 in the reference).

    Returns:
        Sorted, distinct indices into `pts_seconds`.
    """
    num_frames, fps = _check_sampling(num_frames, fps)
    pts, end = _clip_timing(pts_seconds, end_seconds)
    first = float(pts[0])
    span = end - first
    count = _reference_count(num_frames, span, fps)
    start, stop = 0, pts.size - 1
    if _reference_skips(span, num_frames, fps):
        times = np.array([first + REFERENCE_SKIP_SECONDS, end - REFERENCE_SKIP_SECONDS])
        start, stop = _frames_on_screen(pts, times, span) if times[0] < times[1] else (0, 0)
        if start >= stop:
            start, stop = 0, pts.size - 1
    return _frames_on_screen(pts, np.linspace(pts[start], pts[stop], count), span)


def _reference_count(num_frames: int, duration: float, fps: float) -> int:
    return max(1, min(int(round(fps * duration)), num_frames))


def _reference_skips(duration: float, num_frames: int, fps: float) -> bool:
    return duration - 2 * REFERENCE_SKIP_SECONDS > num_frames * fps


def load_video(
    source: VideoInput,
    num_frames: int = 12,
    fps: float | None = None,
    source_fps: float = 1.0,
    sampling: str = "uniform",
) -> Video:
    """Decode and sample a video: every sampled frame at once (`open_video` reads them a chunk at a time).

    Args:
        source: a path, raw bytes, a binary file object, a uint8 tensor `(T, 3, H, W)`, a list of PIL images, a
            `Video` (returned as is) or a `VideoReader` (read).
        num_frames: the number of frames to sample (an upper bound when `fps` is given).
        fps: sample one frame every `1/fps` seconds instead of uniformly; with `sampling="reference"`, the target
            rate (`None`: 1 fps, the reference's).
        source_fps: frame rate of pre-decoded frames (tensor or PIL input), used for timestamps.
        sampling: `"uniform"` (`sample_frames_by_time`: a frame at the centre of each of equal time slots) or
            `"reference"` (`sample_frames_reference`: the reference Frames2LoRA's rule, at most `num_frames` at `fps`,
            a second skipped at each end of a long clip, both ends included).

    Returns:
        `Video` with `frames` `(T, 3, H, W)` uint8, `T <= num_frames`, and `metadata.timestamps` the sampled frames'
        presentation times.

    Raises:
        InvalidSamplingError: `num_frames`, `fps` or `source_fps` is not a positive (finite) number, or `sampling`
            is not one of `FRAME_SAMPLING`.
        InvalidFramesError: the input is of the wrong type, or frames of the wrong dtype or shape.
        VideoNotFoundError, EmptyVideoError, VideoDecodeError: the file is missing, empty or not a decodable video.
    """
    reader = open_video(source, num_frames=num_frames, fps=fps, source_fps=source_fps, sampling=sampling)
    return source if isinstance(source, Video) else reader.read()


def open_video(
    source: VideoInput,
    num_frames: int = 12,
    fps: float | None = None,
    source_fps: float = 1.0,
    sampling: str = "uniform",
) -> VideoReader:
    """Sample a video without decoding its frames: a `VideoReader` that decodes them when they are read.

    Takes the arguments of `load_video` and samples the same frames with the same times (`open_video(...).read()` is
    `load_video(...)`). A file is opened and its packets scanned for every frame's presentation time (no decoding);
    frames are decoded by `read`, only those asked for. Tensor and PIL inputs are already in memory: reading slices
    them. A `Video` gives a reader of its frames, a `VideoReader` is returned as is. With torchcodec < 0.17 (no
    packet scan) a frame's time is known only once it is decoded, so opening a file decodes its sampled frames.

    Raises:
        The errors of `load_video`, except that a file that opens but cannot be decoded raises `VideoDecodeError`
        when the broken frames are read.
    """
    num_frames, fps = _check_sampling(num_frames, fps)
    if sampling not in FRAME_SAMPLING:
        raise InvalidSamplingError(f"sampling must be one of {FRAME_SAMPLING}, got {sampling!r}.")
    if sampling == "reference" and fps is None:
        fps = REFERENCE_FPS
    if isinstance(source_fps, bool) or not _is_positive_real(source_fps):
        raise InvalidSamplingError(
            f"source_fps must be a positive, finite number of frames per second, got {source_fps!r}. Pass the frame "
            "rate of your pre-decoded frames (it only sets their timestamps), e.g. source_fps=30.0."
        )
    source_fps = float(source_fps)
    if isinstance(source, VideoReader):
        return source
    if isinstance(source, Video):
        return _in_memory_reader(source.frames, source.metadata, list(range(source.num_frames)))
    if isinstance(source, torch.Tensor):
        return _sample_decoded(_check_frame_tensor(source), num_frames, fps, source_fps, sampling)
    if isinstance(source, np.ndarray):
        raise InvalidFramesError(
            "Got a numpy array; pass a torch tensor instead: `torch.from_numpy(frames)`, followed by "
            "`.permute(0, 3, 1, 2)` if the frames are (T, H, W, 3)."
        )
    if isinstance(source, (list, tuple)):
        return _sample_decoded(_check_frame_tensor(_pil_to_tensor(source)), num_frames, fps, source_fps, sampling)
    if isinstance(source, (str, os.PathLike)):
        source = _check_path(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise EmptyVideoError("The video bytes are empty. Pass the bytes of a whole video file.")
        source = bytes(source)
    elif isinstance(source, io.TextIOBase):
        raise InvalidFramesError(
            "The file object is open in text mode; videos are binary. Open it with `open(path, 'rb')` or pass the path."
        )
    elif not isinstance(source, io.IOBase) and not hasattr(source, "read"):
        raise InvalidFramesError(f"Cannot read a video from a {type(source).__name__}. Pass {_INPUT_KINDS}.")
    return _open_file(source, num_frames, fps, sampling)


def _check_sampling(num_frames: Any, fps: Any) -> tuple[int, float | None]:
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1:
        raise InvalidSamplingError(
            f"num_frames must be a positive int, got {num_frames!r}. Pass how many frames to sample, e.g. "
            "num_frames=12."
        )
    if fps is not None and (isinstance(fps, bool) or not _is_positive_real(fps)):
        raise InvalidSamplingError(
            f"fps must be a positive, finite number or None, got {fps!r}. Pass e.g. fps=1.0 to sample one frame per "
            "second (at most num_frames), or fps=None to sample num_frames spread over the whole video."
        )
    return int(num_frames), None if fps is None else float(fps)


def _is_count(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def _is_positive_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value) and value > 0


def _positive_or_none(value: Any) -> float | None:
    return float(value) if _is_positive_real(value) else None


def _check_path(source: str | os.PathLike) -> str:
    path = Path(source)
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
        size = path.stat().st_size if is_file else 0
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission on a parent folder
        raise VideoNotFoundError(f"Cannot use {str(source)!r} as a video path ({exc}). Check the path.") from exc
    if is_dir:
        raise VideoNotFoundError(f"'{path}' is a folder, not a video file. Pass the path of a video file inside it.")
    if not is_file:
        raise VideoNotFoundError(f"No video file at '{path}'. Check the path.")
    if size == 0:
        raise EmptyVideoError(f"'{path}' is an empty file. Pass a video file that contains frames.")
    return str(path)


def _open_file(source: Any, num_frames: int, fps: float | None, sampling: str = "uniform") -> VideoReader:
    from torchcodec.decoders import VideoDecoder

    name = source if isinstance(source, str) else f"<{type(source).__name__}>"
    pts = _presentation_times(source)  # before the decoder opens a file object: the scan moves its position
    try:
        decoder = VideoDecoder(source, seek_mode="exact")
        meta = decoder.metadata
        total = meta.num_frames
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with FFmpeg's message
        at_start = "" if isinstance(source, (str, bytes)) else ", read from its start (`.seek(0)` it first)"
        raise VideoDecodeError(
            f"Could not open {name} as a video ({exc}). Check that it is a complete video file (e.g. mp4, webm) that "
            f"FFmpeg can read{at_start}."
        ) from exc
    if not total:
        raise EmptyVideoError(f"{name} contains no video frames. Pass a video with at least one frame.")
    average_fps = _positive_or_none(meta.average_fps)

    def decode(indices: list[int]) -> tuple[torch.Tensor, list[float]]:
        """Frames at source `indices`, `(n, 3, H, W)` uint8, and their pts in seconds."""
        try:
            batch = decoder.get_frames_at(indices)
            frames = batch.data
        except Exception as exc:
            raise VideoDecodeError(
                f"Decoding frames {indices[0]}..{indices[-1]} of {name} failed ({exc}); the file is probably "
                "truncated or corrupt. Re-encode or re-download it."
            ) from exc
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3 or 0 in frames.shape:
            raise VideoDecodeError(
                f"{name} decoded to frames of shape {tuple(frames.shape)} and dtype {frames.dtype}, not (T, 3, H, W) "
                "uint8. Re-encode it as an 8-bit RGB/YUV video (e.g. H.264 yuv420p)."
            )
        return frames.contiguous(), batch.pts_seconds.double().tolist()

    def metadata(indices: list[int], timestamps: list[float], width: int, height: int) -> TimedVideoMetadata:
        return TimedVideoMetadata(
            total_num_frames=total,
            fps=average_fps,
            width=width,
            height=height,
            duration=_positive_or_none(meta.duration_seconds),
            video_backend="torchcodec",
            frames_indices=indices,
            frames_timestamps=timestamps,
        )

    if pts is None or len(pts) != total:
        # No frame index (torchcodec < 0.17): assume a constant rate, as the container's average fps says; a frame's
        # pts is known only once it is decoded, so the sampled frames are decoded now.
        indices = _indices_at_constant_rate(total, average_fps, num_frames, fps, sampling)
        begin = float(meta.begin_stream_seconds or 0.0)
        frames, frame_pts = decode(indices)
        times = [max(0.0, t - begin) for t in frame_pts]
        return _in_memory_reader(
            frames, metadata(indices, times, frames.shape[-1], frames.shape[-2]), list(range(len(indices)))
        )
    end = float(meta.end_stream_seconds) if meta.end_stream_seconds is not None else float(pts[-1])
    if sampling == "reference":
        indices = sample_frames_reference(pts, end, num_frames, fps)
    else:
        indices = sample_frames_by_time(pts, end, num_frames, fps)
    # The scan's pts are the decoder's, bit for bit (both are the packets' pts times the stream's time base).
    times = [max(0.0, float(pts[index]) - float(pts[0])) for index in indices]

    def decode_sampled(positions: list[int]) -> torch.Tensor:
        return decode([indices[position] for position in positions])[0]

    return VideoReader(metadata(indices, times, meta.width, meta.height), decode_sampled, range(len(indices)))


def _presentation_times(source: Any) -> np.ndarray | None:
    """`(N,)` pts in seconds of every frame in presentation order, from a demuxing scan (no decoding), or `None` where
    the installed torchcodec has no `Demuxer` or the source cannot be scanned (then `_decode` reports the error)."""
    try:
        from torchcodec.decoders import Demuxer
    except ImportError:
        return None
    position = None
    if not isinstance(source, (str, bytes)):
        try:
            position = source.tell()
        except Exception:
            return None  # an unseekable stream can be read only once: leave it to the decoder
    try:
        return Demuxer(source, streams="video").streams[0].scan().pts_seconds.numpy()
    except Exception:
        return None
    finally:
        if position is not None:
            with contextlib.suppress(Exception):  # if it cannot seek back, the decoder fails to open it and says so
                source.seek(position)


def _check_frame_tensor(frames: torch.Tensor) -> torch.Tensor:
    if frames.dtype != torch.uint8:
        raise InvalidFramesError(
            f"Frame tensors must be uint8 in [0, 255], got {frames.dtype}. Convert with "
            "`(frames * 255).round().clamp(0, 255).to(torch.uint8)` if they are floats in [0, 1]."
        )
    if frames.ndim == 5:
        raise InvalidFramesError(
            f"Got a 5-D tensor {tuple(frames.shape)}; `load_video` takes one video (T, 3, H, W). Pass `frames[i]` "
            "for each video of a batch."
        )
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise InvalidFramesError(
            f"Frame tensors must have shape (T, 3, H, W), got {tuple(frames.shape)}. For (T, H, W, 3) frames use "
            "`frames.permute(0, 3, 1, 2)`."
        )
    if frames.shape[0] == 0:
        raise EmptyVideoError("The frame tensor holds zero frames. Pass at least one frame.")
    if frames.shape[2] == 0 or frames.shape[3] == 0:
        raise InvalidFramesError(
            f"The frames are empty images, of shape {tuple(frames.shape)}. Pass frames at least 1x1 pixel in size."
        )
    return frames


def _pil_to_tensor(images: Sequence[Any]) -> torch.Tensor:
    from PIL import Image

    if len(images) == 0:
        raise EmptyVideoError("The list of images is empty. Pass at least one frame.")
    if not all(isinstance(image, Image.Image) for image in images):
        hint = ""
        if all(isinstance(image, torch.Tensor) for image in images):
            hint = " For a list of (3, H, W) uint8 tensors pass `torch.stack(frames)`."
        elif all(isinstance(image, np.ndarray) for image in images):
            hint = " For (H, W, 3) uint8 arrays pass `torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)`."
        raise InvalidFramesError(f"A list input must hold PIL images only (one per frame).{hint}")
    arrays = []
    for index, image in enumerate(images):
        try:
            arrays.append(np.asarray(image.convert("RGB")))
        except Exception as exc:  # an unsupported mode, or an image file that is truncated or unreadable
            raise InvalidFramesError(
                f"Frame {index} (a PIL image in mode {image.mode!r}) cannot be converted to RGB ({exc}). Convert it "
                "yourself, e.g. `image.convert('RGBA').convert('RGB')`, or re-save the image."
            ) from exc
    if len({a.shape for a in arrays}) != 1:
        raise InvalidFramesError("All PIL frames must have the same size. Resize them to a common size first.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _indices_at_constant_rate(
    total: int, source_fps: float | None, num_frames: int, fps: float | None, sampling: str
) -> list[int]:
    if sampling == "reference":
        if source_fps is None:
            raise InvalidSamplingError(
                "The reference's sampling needs the video's frame rate, which this file does not state; pass "
                "`sampling='uniform'`."
            )
        return reference_frame_indices(total, source_fps, num_frames, fps)
    return sample_frame_indices(total, source_fps, num_frames, fps)


def _sample_decoded(
    frames: torch.Tensor, num_frames: int, fps: float | None, source_fps: float, sampling: str = "uniform"
) -> VideoReader:
    total = frames.shape[0]
    duration = total / source_fps
    if not math.isfinite(duration):
        raise InvalidSamplingError(
            f"source_fps={source_fps!r} is too small: {total} frames would last {duration} s. Pass the real frame "
            "rate of the frames."
        )
    indices = _indices_at_constant_rate(total, source_fps, num_frames, fps, sampling)
    metadata = TimedVideoMetadata(
        total_num_frames=total,
        fps=source_fps,
        width=frames.shape[-1],
        height=frames.shape[-2],
        duration=duration,
        video_backend="tensor",
        frames_indices=indices,
        frames_timestamps=[index / source_fps for index in indices],
    )
    return _in_memory_reader(frames, metadata, indices)


def _in_memory_reader(frames: torch.Tensor, metadata: VideoMetadata, indices: list[int]) -> VideoReader:
    """A reader of `frames[indices]`, `indices` parallel to `metadata.timestamps` (frames already in memory: reading
    slices them)."""

    def decode(positions: list[int]) -> torch.Tensor:
        return frames[[indices[position] for position in positions]].contiguous()

    return VideoReader(metadata, decode, range(len(indices)))
