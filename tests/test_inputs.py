"""Stage 2 with the pixels made chunk by chunk: `build_chunked_hypernetwork_inputs` gives the tokens of
`build_hypernetwork_inputs` without processing a frame, and pixel chunks that together are its `pixel_values`.

The tokens come from running the processor on 2×2 stand-in frames (`inputs._prompt_tokens`), which holds only while
SmolVLM's processor writes a video's text from its frame count and metadata alone. If a transformers upgrade breaks
that, `test_chunked_inputs_have_the_tokens_of_the_processor_on_the_real_frames` fails here first.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peft_hyper import VideoReader, load_video, open_video, split_video
from peft_hyper.inputs import (
    ChunkedVideoInputs,
    HypernetworkInputSpec,
    build_chunked_hypernetwork_inputs,
    build_hypernetwork_inputs,
)
from peft_hyper.testing.models import build_smolvlm_processor
from peft_hyper.testing.videos import make_test_frames, write_video

SPEC = HypernetworkInputSpec(num_frames=16, fps=None, video_size=None, prompt="Describe.", generation_prompt=False)


@pytest.fixture(scope="module")
def processor():
    return build_smolvlm_processor()


@pytest.fixture(scope="module")
def minutes_long(tmp_path_factory) -> str:
    """90 frames at 1 fps: times past a minute ("Frame from 01:05") and a "0:01:30" duration."""
    path = tmp_path_factory.mktemp("long") / "minutes.mp4"
    return str(write_video(make_test_frames(90, 32, 48, seed=4), path, fps=1))


def whole_pixels(inputs: ChunkedVideoInputs, index: int, frames_per_chunk: int | None):
    chunks = list(inputs.pixel_chunks(index, frames_per_chunk))
    return torch.cat([pixels for pixels, _ in chunks], dim=1), torch.cat([mask for _, mask in chunks], dim=1), chunks


@pytest.mark.parametrize(
    "spec, padding_side",
    [
        (SPEC, None),
        (dataclasses.replace(SPEC, generation_prompt=True, prompt="Internalize this video."), "left"),
        (dataclasses.replace(SPEC, video_size=48), "right"),
    ],
)
def test_chunked_inputs_have_the_tokens_of_the_processor_on_the_real_frames(
    processor, clips, minutes_long, spec, padding_side
):
    videos = [
        load_video(minutes_long, num_frames=13),
        load_video(clips[0], num_frames=5),  # shorter: padded with 8 frames in the batch
        load_video(make_test_frames(9, 20, 30, seed=1), num_frames=9, source_fps=3.0),  # another size
    ]
    expected = build_hypernetwork_inputs(processor, videos, spec, padding_side=padding_side)
    chunked = build_chunked_hypernetwork_inputs(processor, videos, spec, padding_side=padding_side)
    assert set(chunked) == {"input_ids", "attention_mask"}
    assert torch.equal(chunked["input_ids"], expected["input_ids"])
    assert torch.equal(chunked["attention_mask"], expected["attention_mask"])
    text = processor.tokenizer.decode(chunked["input_ids"][0])
    assert "Frame from 01:05" in text and "0:01:30" in text  # what the real frames' prompt says
    for index, video in enumerate(videos):
        pixels, mask, chunks = whole_pixels(chunked, index, 4)
        assert [c[0].shape[1] for c in chunks] == [4] * (video.num_frames // 4) + [video.num_frames % 4] * (
            video.num_frames % 4 > 0
        )
        assert torch.equal(pixels[0], expected["pixel_values"][index, : video.num_frames])
        assert torch.equal(mask[0], expected["pixel_attention_mask"][index, : video.num_frames])
        assert not expected["pixel_values"][index, video.num_frames :].any()  # the rest is batch padding


def test_segments_read_lazily_have_the_inputs_of_decoded_segments(processor, minutes_long):
    decoded = split_video(load_video(minutes_long, num_frames=40), 12)
    lazy = split_video(open_video(minutes_long, num_frames=40), 12)
    expected = build_hypernetwork_inputs(processor, decoded, SPEC)
    chunked = build_chunked_hypernetwork_inputs(processor, lazy, SPEC)
    assert torch.equal(chunked["input_ids"], expected["input_ids"])
    for index, segment in enumerate(decoded):
        pixels, _, _ = whole_pixels(chunked, index, None)  # one chunk per segment
        assert torch.equal(pixels[0], expected["pixel_values"][index, : segment.num_frames])


def test_chunked_inputs_move_to_the_models_device_and_dtype(processor, clips):
    inputs = build_chunked_hypernetwork_inputs(processor, [open_video(clips[0], num_frames=6)], SPEC)
    moved = inputs.to("cpu", torch.bfloat16)
    assert moved["input_ids"].dtype == torch.long and moved.dtype == torch.bfloat16
    pixels, mask = next(moved.pixel_chunks(0, 4))
    assert pixels.dtype == torch.bfloat16 and pixels.shape[:2] == (1, 4) and mask.dtype == torch.long
    assert isinstance(inputs.videos[0], VideoReader)
