"""Tests of the test pattern and the mp4 writer in `peft_hyper.testing.videos`."""

import pytest
import torch

from peft_hyper.testing.videos import make_test_frames, write_video


def test_write_video_round_trips_through_the_decoder(tmp_path):
    from torchcodec.decoders import VideoDecoder

    path = write_video(make_test_frames(24, 48, 64, seed=0), tmp_path / "clip.mp4", fps=8)
    decoder = VideoDecoder(str(path), seek_mode="exact")
    assert decoder.metadata.num_frames == 24 and decoder.metadata.average_fps == 8
    assert (decoder.metadata.height, decoder.metadata.width) == (48, 64)
    decoded = decoder.get_frames_in_range(0, 24).data
    assert decoded.shape == (24, 3, 48, 64) and decoded.dtype == torch.uint8
    expected = make_test_frames(24, 48, 64, seed=0)
    assert (decoded.float() - expected.float()).abs().mean() < 8  # lossy codec


def test_write_video_refuses_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(make_test_frames(4, 33, 64), tmp_path / "odd.mp4", fps=8)
    assert not (tmp_path / "odd.mp4").exists()


def test_test_frames_vary_with_seed():
    frames = make_test_frames(8, 32, 32, seed=0)
    assert frames.shape == (8, 3, 32, 32) and frames.dtype == torch.uint8
    assert torch.equal(frames, make_test_frames(8, 32, 32, seed=0))
    assert not torch.equal(frames[0], frames[-1])  # the square moves
    assert (frames.float() - make_test_frames(8, 32, 32, seed=1).float()).abs().mean() > 10
    static = make_test_frames(8, 32, 32, seed=0, pattern="static_square")
    assert torch.equal(static[0], static[-1])
