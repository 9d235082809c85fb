"""Shared fixtures: a tiny SmolVLM saved offline, real mp4 clips written with torchcodec, small hypernetworks."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import peft_hyper  # noqa: E402,F401  (registers the HYPERLORA peft type)
from peft_hyper import HyperLoraConfig  # noqa: E402
from peft_hyper.testing.models import build_tiny_smolvlm, save_tiny_smolvlm  # noqa: E402
from peft_hyper.testing.videos import make_test_frames, write_video  # noqa: E402


def small_config(**overrides) -> HyperLoraConfig:
    """A hypernetwork small enough for CPU tests; `init_scale_b=0.5` so that generated adapters are non-zero."""
    kwargs = dict(
        r=4, latent_dim=32, num_latents=4, num_blocks=2, num_heads=2, head_dim=16, num_frames=4, init_scale_b=0.5
    )
    kwargs.update(overrides)
    return HyperLoraConfig(**kwargs)


def pointing_at(router, second: float | None, sharpness: float = 30.0) -> None:
    """Set a `SegmentRouter` to answer every question with `second` (`None`: no time), whatever the question."""
    import torch

    from peft_hyper.hypernetwork import second_features

    with torch.no_grad():
        router.head.weight.zero_()
        if second is None:
            router.head.bias.copy_(torch.cat([torch.zeros(router.num_time_features), torch.tensor([10.0])]))
        else:
            query = sharpness * second_features(torch.tensor([second]), router.num_time_features)[0]
            router.head.bias.copy_(torch.cat([query, torch.tensor([-10.0])]))


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> str:
    return str(save_tiny_smolvlm(tmp_path_factory.mktemp("tiny_smolvlm")))


@pytest.fixture(scope="session")
def other_base_dir(tmp_path_factory) -> str:
    """A tiny SmolVLM with a different text width: the 'wrong base model'."""
    model, processor = build_tiny_smolvlm(seed=1, text_hidden=96, heads=4, kv_heads=2, intermediate=160)
    return str(save_tiny_smolvlm(tmp_path_factory.mktemp("other_smolvlm"), model=model, processor=processor))


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("clips")
    return [
        str(write_video(make_test_frames(16, 48, 64, seed=seed), folder / f"clip{seed}.mp4", fps=8))
        for seed in range(3)
    ]


@pytest.fixture
def vlm(tiny_base_dir):
    from transformers import SmolVLMForConditionalGeneration

    return SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir).eval()


@pytest.fixture
def hyper_model(vlm):
    from peft import get_peft_model

    return get_peft_model(vlm, small_config())


@pytest.fixture
def local_eval_paths(tmp_path, monkeypatch):
    """Run in `tmp_path`, which holds `notes.txt` (not evaluation data) and an empty `folder/`; any Hub lookup fails."""
    from pathlib import Path

    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("a local-looking path must not be looked up on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("hello\n")
    Path("folder").mkdir()
    return tmp_path
