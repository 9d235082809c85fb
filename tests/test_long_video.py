"""Internalizing a long video in flat memory: frames are sampled first, then decoded, processed and encoded a chunk (or
a batch of segments) at a time, and the adapters are those of the path that decoded and processed everything at once."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config
from peft import get_peft_model
from torchcodec.decoders import VideoDecoder

from peft_hyper import compose_adapters, load_video, split_video
from peft_hyper.lora import factors_to_state_dicts
from peft_hyper.testing.videos import make_test_frames, write_video

BIAS = 4  # small_config's bias rank


@pytest.fixture
def long_clip(tmp_path) -> str:
    """40 frames at 4 fps (10 s), so that segments' times run past the first seconds."""
    return str(write_video(make_test_frames(40, 48, 64, seed=7), tmp_path / "long.mp4", fps=4))


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """The number of frames of every decoder call, in order."""
    calls: list[int] = []
    get_frames_at = VideoDecoder.get_frames_at

    def counting(self, indices, *args, **kwargs):
        calls.append(len(indices))
        return get_frames_at(self, indices, *args, **kwargs)

    monkeypatch.setattr(VideoDecoder, "get_frames_at", counting)
    return calls


def eager_adapters(tuner, videos) -> list[dict[str, torch.Tensor]]:
    """The adapters of `videos` (decoded `Video`s) from processor inputs made all at once: the path before chunking."""
    with torch.no_grad():
        return factors_to_state_dicts(tuner.generate_lora_factors(tuner.hypernetwork_inputs(videos)))


def assert_same_adapter(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_a_whole_video_adapter_is_the_one_of_pixels_made_all_at_once(vlm, clips, long_clip):
    model = get_peft_model(vlm, small_config(frames_per_vision_chunk=3, num_frames=16)).eval()
    tuner = model.base_model
    videos = [long_clip, clips[1], make_test_frames(10, 32, 48, seed=2)]  # file, file, tensor
    expected = eager_adapters(tuner, tuner.load_videos(videos, num_frames=16)[0])
    got = model.generate_adapter(videos, num_frames=16)  # 16, 16 and 10 frames in chunks of 3: one batch
    for adapter, reference in zip(got, expected, strict=True):
        assert_same_adapter(adapter, reference)
    tuner.peft_config["default"].frames_per_vision_chunk = None  # one chunk per video
    assert_same_adapter(model.generate_adapter(long_clip, num_frames=16), expected[0])


def test_a_whole_video_is_decoded_and_processed_one_chunk_at_a_time(vlm, long_clip, decoded, monkeypatch):
    model = get_peft_model(vlm, small_config(frames_per_vision_chunk=6, num_frames=40)).eval()
    processor = model.base_model.processor
    processed: list[int] = []

    class CountingVideoProcessor:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, videos, *args, **kwargs):
            flat = [video for item in videos for video in (item if isinstance(item, list) else [item])]
            processed.extend(int(video.shape[0]) for video in flat if video.shape[-1] > 2)  # not the 2×2 stand-ins
            return self.inner(videos, *args, **kwargs)

    monkeypatch.setattr(processor, "video_processor", CountingVideoProcessor(processor.video_processor))
    model.generate_adapter(long_clip)
    assert decoded == [6, 6, 6, 6, 6, 6, 4]  # every sampled frame once, a chunk at a time
    assert processed == [6, 6, 6, 6, 6, 6, 4]


def test_a_segmented_adapter_is_the_one_of_segments_decoded_and_processed_all_at_once(hyper_model, long_clip):
    hyper_model.eval()
    tuner = hyper_model.base_model
    segments = split_video(load_video(long_clip, num_frames=40), 12)  # 12, 12, 12, 4 frames
    parts = []
    for start in range(0, len(segments), 3):  # the batches of segment_batch_size=3: [12, 12, 12], [4]
        parts += eager_adapters(tuner, segments[start : start + 3])
    expected = compose_adapters(parts, bias_rank=BIAS)
    got = hyper_model.generate_adapter(long_clip, num_frames=40, segment_frames=12, segment_batch_size=3)
    assert_same_adapter(got, expected)

    frames = make_test_frames(40, 32, 48, seed=5)  # frames already in memory (1 fps) are sliced
    segments = split_video(load_video(frames, num_frames=40), 12)
    parts = []
    for start in range(0, len(segments), 3):
        parts += eager_adapters(tuner, segments[start : start + 3])
    got = hyper_model.generate_adapter(frames, num_frames=40, segment_frames=12, segment_batch_size=3)
    assert_same_adapter(got, compose_adapters(parts, bias_rank=BIAS))


def test_a_segmented_video_holds_at_most_one_batch_of_segments(hyper_model, long_clip, decoded):
    forwards = []
    generate = hyper_model.base_model.generate_lora_factors

    def counting(inputs, *args, **kwargs):
        forwards.append((len(decoded), int(inputs["input_ids"].shape[0])))
        return generate(inputs, *args, **kwargs)

    hyper_model.base_model.generate_lora_factors = counting
    hyper_model.generate_adapter(long_clip, num_frames=40, segment_frames=5, segment_batch_size=2)
    del hyper_model.base_model.generate_lora_factors
    assert forwards == [(2 * k, 2) for k in range(4)]  # before each forward: the earlier batches' segments only
    assert decoded == [5] * 8  # one segment per decoder call (frames_per_vision_chunk=16 > 5), each frame once


def test_a_composition_built_part_by_part_is_compose_adapters(vlm, hyper_model, clips):
    from peft_hyper import InvalidAdapterError
    from peft_hyper.composition import Composition

    parts = hyper_model.generate_adapter(clips)
    composition = Composition(len(parts), BIAS)
    with pytest.raises(InvalidAdapterError, match="0 of the composition's 3 parts"):
        composition.result()
    for part in parts:
        composition.add(part)
    assert_same_adapter(composition.result(), compose_adapters(parts, bias_rank=BIAS))
    assert_same_adapter(composition.result(max_rank=6), compose_adapters(parts, bias_rank=BIAS, max_rank=6))
    with pytest.raises(InvalidAdapterError, match="added already"):
        composition.add(parts[0])
    other = get_peft_model(vlm, small_config()).generate_adapter(clips[0])  # another hypernetwork's bias block
    mixed = Composition(2, BIAS)
    mixed.add(parts[0])
    with pytest.raises(InvalidAdapterError, match="bias block"):
        mixed.add(other)
