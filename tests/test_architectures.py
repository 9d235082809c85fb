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


# Parameter counts of the reference's released hypernetworks (the `.pt` files' 140 tensors), in millions.
REFERENCE_PARAMS_M = {"500M": 128.63, "2.2B": 227.32}


def expected_reference_params(hidden: int, layers: int, d_in: int, latent: int = 512, rank: int = 16) -> int:
    """Parameter count of the reference hypernetwork (`architecture="frames2lora"`), written out from its key table."""
    context = 2 * (4 * hidden * hidden) + latent * 4 * hidden  # SwiGLU h → 4h → d
    attention = 2048 * latent + 2 * 512 * latent + latent * 2048  # 16 x 128 query heads, 4 x 128 key/value heads
    layer = 5 * latent + attention + 3 * 2048 * latent  # five RMSNorms, attention, SwiGLU d → 4d → d
    encoder = 8 * latent + 9 * layer + latent
    decoder = rank * latent + layer + latent
    pre_head = 2 * 2 * latent + (latent * 4 * latent + 4 * latent) + (4 * latent * latent + latent)
    head = layers * latent * (d_in + hidden)
    per_layer_rank = layers * rank * (d_in + hidden) + 2 * layers * rank  # bias block, scales
    return context + encoder + decoder + pre_head + head + per_layer_rank


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS_M))
def test_reference_architecture_has_the_reference_parameter_count(name):
    hidden, layers, intermediate = ARCHITECTURES[name]
    with torch.device("meta"):
        vlm = SmolVLMForConditionalGeneration(smolvlm2_config(name))
    model = get_peft_model(vlm, HyperLoraConfig(architecture="frames2lora"))
    hypernetwork = model.base_model.hypernetwork
    assert hypernetwork.head.shape == (layers, 1, 512, intermediate + hidden)
    assert hypernetwork.bias_a["mlp__down_proj"].shape == (layers, 16, intermediate)
    n_params = sum(p.numel() for p in hypernetwork.parameters())
    print(f"{name}: reference hypernetwork {n_params:,} params")
    assert n_params == expected_reference_params(hidden, layers, intermediate)
    assert round(n_params / 1e6, 2) == REFERENCE_PARAMS_M[name]
    lora = model.base_model.lora_config
    assert lora.r == lora.lora_alpha == 32
