"""Stage 1 of the data flow: a video (path, bytes, file object, frame tensor or PIL images) → sampled uint8 frames.

Decoding is torchcodec's. The frames come with a `transformers.video_utils.VideoMetadata` whose `frames_indices` and
`fps` give each frame's timestamp, which `SmolVLMProcessor` writes into the prompt.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from transformers.video_utils import VideoMetadata

from .errors import EmptyVideoError, InvalidFramesError, VideoDecodeError, VideoNotFoundError

VideoInput = Union[str, os.PathLike, bytes, io.IOBase, torch.Tensor, Sequence[Any], "Video"]


@dataclass
class Video:
    """Sampled frames of one video.

    Attributes:
        frames: `(T, 3, H, W)` uint8 RGB frames.
        metadata: the source's frame count, fps and duration, and the indices of the sampled frames.
    """

    frames: torch.Tensor
    metadata: VideoMetadata

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


def sample_frame_indices(
    total_num_frames: int, source_fps: float | None, num_frames: int, fps: float | None = None
) -> list[int]:
    """Indices of the frames to keep: `num_frames` spread uniformly, or one every `1/fps` seconds capped at
    `num_frames` (uniform over the whole clip when the cap applies). Each index is the centre of its time slot."""
    if total_num_frames < 1:
        raise EmptyVideoError("The video has no frames. Pass a video with at least one decodable frame.")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    count = min(num_frames, total_num_frames)
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}.")
        if source_fps is None or source_fps <= 0:
            raise ValueError("Sampling by fps needs the source frame rate; pass `num_frames` instead.")
        duration = total_num_frames / source_fps
        count = max(1, min(count, int(round(duration * fps))))
    slots = (np.arange(count) + 0.5) * total_num_frames / count
    return np.clip(np.floor(slots).astype(int), 0, total_num_frames - 1).tolist()


def load_video(
    source: VideoInput,
    num_frames: int = 12,
    fps: float | None = None,
    source_fps: float = 1.0,
) -> Video:
    """Decode and sample a video.

    Args:
        source: a path, raw bytes, a binary file object, a uint8 tensor `(T, 3, H, W)`, a list of PIL images, or a
            `Video` (returned as is).
        num_frames: the number of frames to sample (an upper bound when `fps` is given).
        fps: sample one frame every `1/fps` seconds instead of uniformly.
        source_fps: frame rate of pre-decoded frames (tensor or PIL input), used for timestamps.

    Returns:
        `Video` with `frames` `(T, 3, H, W)` uint8, `T <= num_frames`.
    """
    if isinstance(source, Video):
        return source
    if isinstance(source, torch.Tensor):
        return _sample_decoded(_check_frame_tensor(source), num_frames, fps, source_fps)
    if isinstance(source, (list, tuple)):
        return _sample_decoded(_pil_to_tensor(source), num_frames, fps, source_fps)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise VideoNotFoundError(f"No video file at '{path}'. Check the path.")
        if path.stat().st_size == 0:
            raise EmptyVideoError(f"'{path}' is an empty file. Pass a video file that contains frames.")
        source = str(path)
    elif isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise EmptyVideoError("The video bytes are empty. Pass the bytes of a whole video file.")
        source = bytes(source)
    elif not isinstance(source, io.IOBase) and not hasattr(source, "read"):
        raise InvalidFramesError(
            f"Cannot read a video from a {type(source).__name__}. Pass a path, bytes, a binary file object, a uint8 "
            "tensor (T, 3, H, W) or a list of PIL images."
        )
    return _decode(source, num_frames, fps)


def _decode(source: Any, num_frames: int, fps: float | None) -> Video:
    from torchcodec.decoders import VideoDecoder

    name = source if isinstance(source, str) else f"<{type(source).__name__}>"
    try:
        decoder = VideoDecoder(source, seek_mode="exact")
        meta = decoder.metadata
        total = meta.num_frames
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with FFmpeg's message
        raise VideoDecodeError(
            f"Could not open {name} as a video ({exc}). Check that it is a complete video file (e.g. mp4, webm) that "
            "FFmpeg can read."
        ) from exc
    if not total:
        raise EmptyVideoError(f"{name} contains no video frames. Pass a video with at least one frame.")
    source_fps = float(meta.average_fps) if meta.average_fps else None
    indices = sample_frame_indices(total, source_fps, num_frames, fps)
    try:
        frames = decoder.get_frames_at(indices).data
    except Exception as exc:
        raise VideoDecodeError(
            f"Decoding frames {indices[0]}..{indices[-1]} of {name} failed ({exc}); the file is probably truncated or "
            "corrupt. Re-encode or re-download it."
        ) from exc
    metadata = VideoMetadata(
        total_num_frames=total,
        fps=source_fps,
        width=meta.width,
        height=meta.height,
        duration=float(meta.duration_seconds) if meta.duration_seconds else None,
        video_backend="torchcodec",
        frames_indices=indices,
    )
    return Video(frames=frames.contiguous(), metadata=metadata)


def _check_frame_tensor(frames: torch.Tensor) -> torch.Tensor:
    if frames.dtype != torch.uint8:
        raise InvalidFramesError(
            f"Frame tensors must be uint8 in [0, 255], got {frames.dtype}. Convert with "
            "`(frames * 255).round().clamp(0, 255).to(torch.uint8)` if they are floats in [0, 1]."
        )
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise InvalidFramesError(
            f"Frame tensors must have shape (T, 3, H, W), got {tuple(frames.shape)}. For (T, H, W, 3) frames use "
            "`frames.permute(0, 3, 1, 2)`."
        )
    if frames.shape[0] == 0:
        raise EmptyVideoError("The frame tensor holds zero frames. Pass at least one frame.")
    return frames


def _pil_to_tensor(images: Sequence[Any]) -> torch.Tensor:
    from PIL import Image

    if len(images) == 0:
        raise EmptyVideoError("The list of images is empty. Pass at least one frame.")
    if not all(isinstance(image, Image.Image) for image in images):
        raise InvalidFramesError("A list input must hold PIL images only (one per frame).")
    arrays = [np.asarray(image.convert("RGB")) for image in images]
    if len({a.shape for a in arrays}) != 1:
        raise InvalidFramesError("All PIL frames must have the same size. Resize them to a common size first.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _sample_decoded(frames: torch.Tensor, num_frames: int, fps: float | None, source_fps: float) -> Video:
    total = frames.shape[0]
    indices = sample_frame_indices(total, source_fps, num_frames, fps)
    metadata = VideoMetadata(
        total_num_frames=total,
        fps=source_fps,
        width=frames.shape[-1],
        height=frames.shape[-2],
        duration=total / source_fps,
        video_backend="tensor",
        frames_indices=indices,
    )
    return Video(frames=frames[indices].contiguous(), metadata=metadata)
