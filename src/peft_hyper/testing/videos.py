"""Test videos: a moving-square test pattern, and the one mp4 writer of `peft_hyper.testing`.

Frames for tests of decoding, sampling and processors come from [`make_test_frames`] (any size, any seed, arbitrary
colours); clips with ground truth come from the synthetic world ([`peft_hyper.testing.world.render_clip`]). Both are
written to disk by [`write_video`]. Metadata for pre-decoded frames is what the runtime builds:
`peft_hyper.load_video(frames, num_frames=len(frames), source_fps=fps).metadata`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

__all__ = ["make_test_frames", "write_video"]


def make_test_frames(
    num_frames: int = 24,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    pattern: Literal["moving_square", "static_square"] = "moving_square",
) -> torch.Tensor:
    """
    Synthetic frames: a coloured square on a coloured background, both drawn from `seed`.

    For `"moving_square"` the square moves linearly from one side of the frame to the other (direction and start
    drawn from `seed`); for `"static_square"` it stays put. Background channels are drawn from [0, 80) and the
    square's from [150, 256), so the square always stands out.

    Returns:
        `torch.Tensor` of shape `(num_frames, 3, height, width)` and dtype `uint8`.
    """
    if pattern not in ("moving_square", "static_square"):
        raise ValueError(f"Unknown pattern {pattern!r}.")
    generator = torch.Generator().manual_seed(seed)
    background = torch.randint(0, 80, (3,), generator=generator, dtype=torch.uint8)
    color = torch.randint(150, 256, (3,), generator=generator, dtype=torch.uint8)
    side = max(2, min(height, width) // 4)
    direction = int(torch.randint(0, 4, (1,), generator=generator))  # 0: right, 1: left, 2: down, 3: up
    fixed = int(torch.randint(0, max(1, min(height, width) - side), (1,), generator=generator))

    frames = background.view(1, 3, 1, 1).expand(num_frames, 3, height, width).clone()
    for t in range(num_frames):
        progress = t / max(1, num_frames - 1) if pattern == "moving_square" else 0.5
        if direction in (0, 1):
            span = width - side
            x = round(progress * span) if direction == 0 else round((1 - progress) * span)
            y = min(fixed, height - side)
        else:
            span = height - side
            y = round(progress * span) if direction == 2 else round((1 - progress) * span)
            x = min(fixed, width - side)
        frames[t, :, y : y + side, x : x + side] = color.view(3, 1, 1)
    return frames


def write_video(frames: torch.Tensor, path: str | Path, fps: float, crf: int | None = None) -> Path:
    """
    Encode uint8 `(T, 3, H, W)` frames as an H.264 / yuv420p mp4 at `fps` with torchcodec; returns `path`.

    `H` and `W` must be even (yuv420p subsamples chroma by 2). `crf=None` is libx264's default quality; a low `crf`
    (the synthetic world uses 12) keeps flat colours close to their values.
    """
    from torchcodec.encoders import VideoEncoder

    height, width = frames.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for yuv420p, got {(height, width)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=float(fps)).to_file(path, codec="libx264", pixel_format="yuv420p", crf=crf)
    return path
