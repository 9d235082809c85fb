"""The hypernetwork on the real SmolVLM2-256M / 500M / 2.2B architectures, on the meta device (no weights)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import HyperLoraConfig
from peft_hyper.testing.models import smolvlm2_config

# (text hidden size, decoder layers, down_proj in-features) of the published SmolVLM2 configs.
ARCHITECTURES = {"256M": (576, 30, 1536), "500M": (960, 32, 2560), "2.2B": (2048, 24, 8192)}


def expected_hypernetwork_params(hidden: int, layers: int, d_in: int, latent: int = 512, rank: int = 16) -> int:
    """Parameter count of the default hypernetwork, written out independently of the modules."""
    d_out = hidden
    context = hidden + (hidden * latent + latent) + (32 * latent + latent) + layers * latent
    attention = 4 * latent + latent * 512 + latent * 2 * 512 + 512 * latent  # 2 LayerNorms, q, kv, out (8 x 64 heads)
    feed_forward = 2 * latent + (latent * 4 * latent + 4 * latent) + (4 * latent * latent + latent)
    perceiver = 8 * latent + 9 * (attention + feed_forward) + 2 * latent
    heads = (8 * rank + rank) + layers * (latent * (d_in + d_out) + (d_in + d_out) + 2 + rank * (d_in + d_out))
    return context + perceiver + heads


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_hypernetwork_shapes_on_real_architectures(name):
    hidden, layers, intermediate = ARCHITECTURES[name]
    with torch.device("meta"):
        vlm = SmolVLMForConditionalGeneration(smolvlm2_config(name))
    model = get_peft_model(vlm, HyperLoraConfig())
    hypernetwork = model.base_model.hypernetwork
    heads = hypernetwork.heads["mlp__down_proj"]
    assert heads.layers == list(range(layers))
    assert heads.weight.shape == (layers, 512, intermediate + hidden)
    assert heads.bias_block_a.shape == (layers, 16, intermediate)
    assert heads.bias_block_b.shape == (layers, hidden, 16)
    assert len(hypernetwork.targets) == layers
    assert all(t.name.startswith("model.text_model.layers.") for t in hypernetwork.targets)
    n_params = sum(p.numel() for p in hypernetwork.parameters())
    head_params = sum(p.numel() for p in heads.parameters())
    print(f"{name}: hypernetwork {n_params:,} params (heads {head_params:,}); head weight {tuple(heads.weight.shape)}")
    assert n_params == expected_hypernetwork_params(hidden, layers, intermediate)
    lora = model.base_model.lora_config
    assert lora.r == lora.lora_alpha == 32
