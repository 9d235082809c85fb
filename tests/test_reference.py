"""The reference Frames2LoRA architecture (`architecture="frames2lora"`) and the converter of its released checkpoints.

Parity is checked without the reference's code: the tests write reference-format checkpoints themselves (stand-in
classes under the reference's module names, tensors in its key layout) and compute the reference's ΔW with a plain
implementation of the math in `reference-architecture.md`, written here and sharing nothing with the library.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_hyper import HyperLoraConfig

# --- configuration ---------------------------------------------------------------------------------------------------


def test_reference_architecture_takes_the_reference_defaults():
    config = HyperLoraConfig(architecture="frames2lora")
    assert (config.num_heads, config.head_dim, config.num_key_value_heads) == (16, 128, 4)
    assert (config.latent_dim, config.num_latents, config.num_blocks, config.r, config.bias_rank) == (
        512,
        8,
        9,
        16,
        16,
    )
    assert config.position_encoding is False
    assert (config.frame_sampling, config.fps, config.num_frames, config.video_size) == ("reference", 1.0, 12, 384)
    ours = HyperLoraConfig()
    assert (ours.architecture, ours.num_heads, ours.head_dim, ours.num_key_value_heads) == ("peft-hyper", 8, 64, 8)
    assert (ours.position_encoding, ours.frame_sampling, ours.fps, ours.video_size) == (True, "uniform", None, None)
    explicit = HyperLoraConfig(
        architecture="frames2lora", num_heads=4, num_key_value_heads=2, fps=2.0, video_size=None
    )
    assert (explicit.num_heads, explicit.num_key_value_heads, explicit.fps, explicit.video_size) == (4, 2, 2.0, 384)
    assert HyperLoraConfig(frame_sampling="reference").video_size == 384  # the sampling rule alone, on our network


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"architecture": "lucidrains"}, "architecture must be one of"),
        ({"frame_sampling": "smart"}, "frame_sampling must be one of"),
        ({"architecture": "frames2lora", "position_encoding": True}, "has no position_encoding"),
        ({"architecture": "frames2lora", "latent_self_attention": True}, "has no latent_self_attention"),
        ({"architecture": "frames2lora", "num_key_value_heads": 3}, "must divide num_heads"),
        ({"num_key_value_heads": 2}, "no grouped-query attention"),
    ],
)
def test_config_refuses_options_an_architecture_lacks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HyperLoraConfig(**kwargs)


def test_reference_config_round_trips_through_json(tmp_path):
    config = HyperLoraConfig(architecture="frames2lora", r=4)
    config.save_pretrained(str(tmp_path))
    loaded = HyperLoraConfig.from_pretrained(str(tmp_path))
    assert loaded.to_dict() == config.to_dict()


def reference_config(**overrides) -> HyperLoraConfig:
    """A reference-architecture hypernetwork small enough for CPU tests, with non-zero B scales."""
    kwargs = dict(
        architecture="frames2lora",
        r=4,
        latent_dim=32,
        num_latents=4,
        num_blocks=2,
        num_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_frames=4,
        init_scale_b=0.5,
    )
    return HyperLoraConfig(**{**kwargs, **overrides})


def test_reference_architecture_generates_and_loads_peft_adapters(vlm, clips):
    model = get_peft_model(vlm, reference_config(target_modules=["down_proj", "o_proj"]))
    tuner = model.base_model
    hypernetwork = tuner.hypernetwork
    assert hypernetwork.kinds == ["mlp.down_proj", "self_attn.o_proj"]
    state_dict = tuner.generate_adapter(clips[0])
    for key, value in state_dict.items():
        assert value.shape[0 if "lora_A" in key else 1] == 8  # r + bias rank
    assert any(value.abs().sum() > 0 for key, value in state_dict.items() if "lora_B" in key)
    tuner.load_generated_adapter(state_dict, "clip")
    bias = tuner.generate_bias_adapter()
    assert set(bias) == set(state_dict)
    a_key = next(key for key in bias if "lora_A" in key)
    assert torch.equal(bias[a_key][:4], torch.zeros_like(bias[a_key][:4]))


def test_reference_architecture_refuses_uneven_targets(vlm):
    config = reference_config(target_modules=r".*text_model\.layers\.(0\.mlp\.down_proj|1\.self_attn\.o_proj)")
    with pytest.raises(ValueError, match="same module kinds"):
        get_peft_model(vlm, config)
