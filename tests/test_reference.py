"""The reference Frames2LoRA architecture (`architecture="frames2lora"`) and the converter of its released checkpoints.

Parity is checked without the reference's code: the tests write reference-format checkpoints themselves (stand-in
classes under the reference's module names, tensors in its key layout) and compute the reference's ΔW with a plain
implementation of the math in `reference-architecture.md`, written here and sharing nothing with the library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoConfig, SmolVLMForConditionalGeneration

from peft_hyper import (
    HyperLoraConfig,
    IncompatibleBaseModelError,
    ReferenceCheckpointError,
    UnsafeCheckpointError,
    UnsupportedReferenceOptionError,
    convert_reference_checkpoint,
)

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


# --- reference-format checkpoints, written by the tests -------------------------------------------------------------

# The reference's pickled config classes (fields as in ctx_to_lora at 27125c7), re-declared under its module names.
REFERENCE_CLASSES = {
    "ctx_to_lora.modeling.hypernet": ("HypernetConfig", [
        "latent_size", "use_light_weight_lora", "light_weight_latent_size", "per_rank_gen", "use_per_rank_bias",
        "use_bias", "per_layer_processing", "use_token_mixing", "num_pre_head_layers", "dropout_rate", "lora_config",
        "extra_modules", "base_hidden_size", "layer_indices", "feature_sizes", "aggregator_config"]),
    "ctx_to_lora.modeling.aggregator": ("AggregatorConfig", [
        "aggregator_type", "num_layers", "num_modules", "num_extra_modules", "output_size", "feature_size",
        "pooling_type", "num_latent_factor", "lora_r", "per_rank_gen", "n_latent_queries", "num_blocks",
        "num_self_attn_per_block", "shared_weights", "layer_to_layer_ctx_encoder"]),
    "ctx_to_lora.configs": ("CtxEncoderArguments", [
        "ctx_encoder_model_name_or_path", "ctx_encoder_type", "layer_idx", "quantize_ctx_encoder",
        "ctx_encoder_last_layer"]),
}  # fmt: skip
HEADS, KV_HEADS, HEAD_DIM = 16, 4, 128  # the reference's perceiver attention (Idefics2PerceiverConfig defaults)


@pytest.fixture
def reference_classes(monkeypatch) -> dict[str, type]:
    """Stand-ins for the reference's config classes, importable under its module names while a test runs (pickle
    finds a class by module and name), so that `torch.save` writes the reference's globals."""
    classes = {}
    for package in ("ctx_to_lora", "ctx_to_lora.modeling"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    for module_name, (class_name, fields) in REFERENCE_CLASSES.items():
        module = types.ModuleType(module_name)
        cls = dataclasses.make_dataclass(class_name, [(name, Any) for name in fields])
        cls.__module__, cls.__qualname__ = module_name, class_name
        setattr(module, class_name, cls)
        monkeypatch.setitem(sys.modules, module_name, module)
        classes[class_name] = cls
    return classes


def _module_features(base_dir: str, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    text = AutoConfig.from_pretrained(base_dir).get_text_config()
    shapes = {
        "down_proj": (text.intermediate_size, text.hidden_size),
        "o_proj": (text.num_attention_heads * text.head_dim, text.hidden_size),
        "up_proj": (text.hidden_size, text.intermediate_size),
    }
    return {n: shapes[n][0] for n in names}, {n: shapes[n][1] for n in names}


def reference_tensors(
    base_dir: str, names: list[str], d: int = 32, latents: int = 4, blocks: int = 2, r: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random tensors in the reference's key layout (reference-architecture.md), with non-zero B scales and bias."""
    generator = torch.Generator().manual_seed(seed)
    text = AutoConfig.from_pretrained(base_dir).get_text_config()
    h, n_layers = text.hidden_size, text.num_hidden_layers
    d_in, d_out = _module_features(base_dir, names)

    def randn(*shape, scale=None):
        scale = shape[-1] ** -0.5 if scale is None else scale
        return torch.randn(*shape, generator=generator) * scale

    def norm(*shape):
        return 1 + 0.1 * torch.randn(*shape, generator=generator)

    tensors = {}
    projection = "aggregator.perceiver.modality_projection."
    tensors[projection + "gate_proj.weight"] = randn(4 * h, h)
    tensors[projection + "up_proj.weight"] = randn(4 * h, h)
    tensors[projection + "down_proj.weight"] = randn(d, 4 * h)
    for part, queries, depth in (("encoder", latents, blocks), ("decoder", len(names) * r, 1)):
        prefix = f"aggregator.perceiver.{part}."
        tensors[prefix + "latents_q"] = randn(queries, d, scale=1.0)
        for i in range(depth):
            layer = f"{prefix}layers.{i}."
            for name in ("input_latents", "input_context", "post_attention", "pre_ff", "post_ff"):
                tensors[f"{layer}{name}_layernorm.weight"] = norm(d)
            tensors[layer + "self_attn.q_proj.weight"] = randn(HEADS * HEAD_DIM, d)
            tensors[layer + "self_attn.k_proj.weight"] = randn(KV_HEADS * HEAD_DIM, d)
            tensors[layer + "self_attn.v_proj.weight"] = randn(KV_HEADS * HEAD_DIM, d)
            tensors[layer + "self_attn.o_proj.weight"] = randn(d, HEADS * HEAD_DIM)
            tensors[layer + "mlp.gate_proj.weight"] = randn(4 * d, d)
            tensors[layer + "mlp.up_proj.weight"] = randn(4 * d, d)
            tensors[layer + "mlp.down_proj.weight"] = randn(d, 4 * d)
        tensors[prefix + "layernorm.weight"] = norm(d)
    for index in ("0", "6"):
        tensors[f"layers.0.mlp.{index}.weight"], tensors[f"layers.0.mlp.{index}.bias"] = norm(d), randn(d, scale=0.1)
    tensors["layers.0.mlp.2.weight"], tensors["layers.0.mlp.2.bias"] = randn(4 * d, d), randn(4 * d, scale=0.1)
    tensors["layers.0.mlp.5.weight"], tensors["layers.0.mlp.5.bias"] = randn(d, 4 * d), randn(d, scale=0.1)
    width = max(d_in[n] + d_out[n] for n in names)
    head_shape = (n_layers, d, width) if len(names) == 1 else (n_layers, len(names), d, width)
    tensors["head.weight"] = randn(*head_shape, scale=d**-0.5)
    for n in names:
        tensors[f"bias_A.{n}"] = randn(n_layers, r, d_in[n], scale=0.1)
        tensors[f"bias_B.{n}"] = randn(n_layers, r, d_out[n], scale=0.1)
        tensors[f"scaler_A.{n}"] = norm(1, n_layers, r, 1)
        tensors[f"scaler_B.{n}"] = randn(1, n_layers, r, 1, scale=0.5)
    return tensors


def write_reference_checkpoint(
    path: Path,
    classes: dict[str, type],
    base_dir: str,
    names: tuple[str, ...] = ("down_proj",),
    prefix: str = "",
    d: int = 32,
    latents: int = 4,
    blocks: int = 2,
    r: int = 4,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """`torch.save` a dict as the reference's `ModulatedPretrainedModel.state_dict()` writes it; `options` override
    HypernetConfig / AggregatorConfig / CtxEncoderArguments fields (by name). Returns the tensors (unprefixed)."""
    names = sorted(names)  # the reference sorts its target modules by name
    text = AutoConfig.from_pretrained(base_dir).get_text_config()
    n_layers = text.num_hidden_layers
    tensors = reference_tensors(base_dir, names, d, latents, blocks, r)
    lora = LoraConfig(r=r, lora_alpha=2 * r**1.5, target_modules=set(names), lora_dropout=0.0)
    aggregator_fields = dict(
        aggregator_type="perceiver", num_layers=n_layers, num_modules=len(names), num_extra_modules=0, output_size=d,
        feature_size=text.hidden_size, pooling_type="mean", num_latent_factor=8, lora_r=r, per_rank_gen=True,
        n_latent_queries=latents, num_blocks=blocks, num_self_attn_per_block=0, shared_weights=False,
        layer_to_layer_ctx_encoder=True,
    )  # fmt: skip
    hypernet_fields = dict(
        latent_size=d, use_light_weight_lora=False, light_weight_latent_size=128, per_rank_gen=True,
        use_per_rank_bias=False, use_bias=True, per_layer_processing=False, use_token_mixing=False,
        num_pre_head_layers=1, dropout_rate=0.0, lora_config=lora, extra_modules=None,
        base_hidden_size=text.hidden_size, layer_indices=torch.arange(n_layers),
        feature_sizes=_module_features(base_dir, names),
    )  # fmt: skip
    ctx_fields = dict(
        ctx_encoder_model_name_or_path=None, ctx_encoder_type="per_layer_activations", layer_idx=None,
        quantize_ctx_encoder=False, ctx_encoder_last_layer=None,
    )  # fmt: skip
    for fields in (aggregator_fields, hypernet_fields, ctx_fields):
        fields.update({k: v for k, v in options.items() if k in fields})
    state = {prefix + key: value for key, value in tensors.items()}
    state["base_model_name_or_path"] = base_dir
    state["hypernet_config"] = classes["HypernetConfig"](
        **hypernet_fields, aggregator_config=classes["AggregatorConfig"](**aggregator_fields)
    )
    state["ctx_encoder_args"] = classes["CtxEncoderArguments"](**ctx_fields)
    torch.save(state, path)
    return tensors


# --- the reference's math, written out plainly (no library code) ------------------------------------------------------


def _rms(x, weight):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _swiglu(x, t, prefix):
    hidden = F.silu(x @ t[prefix + "gate_proj.weight"].T) * (x @ t[prefix + "up_proj.weight"].T)
    return hidden @ t[prefix + "down_proj.weight"].T


def _perceiver_layer(latents, context, mask, t, prefix):
    batch, n = latents.shape[:2]
    x = _rms(latents, t[prefix + "input_latents_layernorm.weight"])
    c = _rms(context, t[prefix + "input_context_layernorm.weight"])
    sources = torch.cat([c, x], dim=1)
    q = (x @ t[prefix + "self_attn.q_proj.weight"].T).view(batch, n, HEADS, HEAD_DIM).transpose(1, 2)
    k = (sources @ t[prefix + "self_attn.k_proj.weight"].T).view(batch, -1, KV_HEADS, HEAD_DIM).transpose(1, 2)
    v = (sources @ t[prefix + "self_attn.v_proj.weight"].T).view(batch, -1, KV_HEADS, HEAD_DIM).transpose(1, 2)
    k, v = (z.repeat_interleave(HEADS // KV_HEADS, dim=1) for z in (k, v))
    scores = q @ k.transpose(2, 3) / math.sqrt(HEAD_DIM)
    if mask is not None:
        keep = torch.cat([mask, torch.ones(batch, n, dtype=torch.bool)], dim=1)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, n, HEADS * HEAD_DIM)
    latents = latents + _rms(
        out @ t[prefix + "self_attn.o_proj.weight"].T, t[prefix + "post_attention_layernorm.weight"]
    )
    ff = _swiglu(_rms(latents, t[prefix + "pre_ff_layernorm.weight"]), t, prefix + "mlp.")
    return latents + _rms(ff, t[prefix + "post_ff_layernorm.weight"])


def _resampler(context, mask, t, prefix):
    latents = t[prefix + "latents_q"].expand(context.shape[0], -1, -1)
    layers = prefix + "layers."
    depth = len({key.removeprefix(layers).split(".")[0] for key in t if key.startswith(layers)})
    for i in range(depth):
        latents = _perceiver_layer(latents, context, mask, t, f"{prefix}layers.{i}.")
    return _rms(latents, t[prefix + "layernorm.weight"])


def reference_delta_weights(t, states, mask, names, features, r):
    """ΔW `(out, in)` per (layer, module name) for one video: states[l] `(1, S, h)` entering layer l."""
    d_in, d_out = features
    alpha = 2 * r**1.5
    head = t["head.weight"] if t["head.weight"].ndim == 4 else t["head.weight"][:, None]
    deltas = {}
    for layer, hidden in enumerate(states):
        context = _swiglu(hidden, t, "aggregator.perceiver.modality_projection.")
        latents = _resampler(context, mask, t, "aggregator.perceiver.encoder.")
        x = _resampler(latents, None, t, "aggregator.perceiver.decoder.")
        y = F.layer_norm(x, x.shape[-1:], t["layers.0.mlp.0.weight"], t["layers.0.mlp.0.bias"])
        y = F.silu(y @ t["layers.0.mlp.2.weight"].T + t["layers.0.mlp.2.bias"])
        y = y @ t["layers.0.mlp.5.weight"].T + t["layers.0.mlp.5.bias"]
        x = x + F.layer_norm(y, y.shape[-1:], t["layers.0.mlp.6.weight"], t["layers.0.mlp.6.bias"])
        x = x / x.norm(dim=-1, keepdim=True)
        for m, name in enumerate(names):
            rows = x[0, m * r : (m + 1) * r] @ head[layer, m]  # (r, max in+out)
            a = rows[:, : d_in[name]] * t[f"scaler_A.{name}"][0, layer]
            b = rows[:, d_in[name] : d_in[name] + d_out[name]] * t[f"scaler_B.{name}"][0, layer]
            a = torch.cat([a, t[f"bias_A.{name}"][layer]])
            b = torch.cat([b, t[f"bias_B.{name}"][layer]])
            deltas[layer, name] = alpha * b.T @ a
    return deltas


def reference_states(vlm, inputs):
    """The inputs of every decoder layer (layer 0: the embeddings with the image features merged), from the VLM's own
    `output_hidden_states`."""
    with torch.no_grad():
        out = vlm.model(**inputs, output_hidden_states=True, use_cache=False)
    return out.hidden_states[:-1], inputs["attention_mask"].bool()


def relative_errors(state_dict, deltas, names):
    """Max relative Frobenius error of the adapter's B @ A against the reference ΔW, per module name."""
    errors = {name: 0.0 for name in names}
    for (layer, name), expected in deltas.items():
        kind = "mlp" if name in ("down_proj", "up_proj") else "self_attn"
        key = f"base_model.model.model.text_model.layers.{layer}.{kind}.{name}"
        got = state_dict[key + ".lora_B.weight"].float() @ state_dict[key + ".lora_A.weight"].float()
        errors[name] = max(errors[name], ((got - expected).norm() / expected.norm()).item())
    return errors


# --- conversion and parity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [("down_proj",), ("down_proj", "o_proj")], ids=["one-kind", "two-kinds"])
def test_converted_checkpoint_generates_the_reference_adapters(
    names, reference_classes, tiny_base_dir, clips, tmp_path, capsys
):
    source = tmp_path / "frames2lora-tiny.pt"
    # the two-kind file is written as after torch.compile (every key prefixed) and with CUDA storage locations
    prefix = "_orig_mod." if len(names) > 1 else ""
    tensors = write_reference_checkpoint(source, reference_classes, tiny_base_dir, names, prefix=prefix)
    output = convert_reference_checkpoint(source, output_dir=tmp_path / "converted")
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "processor_config.json",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    config = json.loads((output / "adapter_config.json").read_text())
    assert (config["architecture"], config["frame_sampling"], config["fps"], config["video_size"]) == (
        "frames2lora", "reference", 1.0, 384,
    )  # fmt: skip

    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(str(output)).eval()
    tuner = model.base_model
    assert tuner.lora_config.lora_alpha == tuner.lora_config.r == 8  # PEFT scaling exactly 1
    state_dict = tuner.generate_adapter(clips[0])
    inputs = tuner.hypernetwork_inputs(tuner.load_videos(clips[0])[0])
    prompt = tuner.processor.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.endswith("Internalize this video for later captioning.<end_of_utterance>\n")
    states, mask = reference_states(tuner.model, inputs)
    deltas = reference_delta_weights(tensors, states, mask, sorted(names), _module_features(tiny_base_dir, names), 4)
    errors = relative_errors(state_dict, deltas, sorted(names))
    with capsys.disabled():
        print(f"\nfp32 parity, max relative error of ΔW per module kind: {errors}")
    assert all(error <= 1e-5 for error in errors.values()), errors

    # a bf16 VLM with the fp32 hypernetwork runs and stays within bf16 tolerance of the fp32 reference
    vlm16 = SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir, dtype=torch.bfloat16).eval()
    tuner16 = PeftModel.from_pretrained(vlm16, str(output)).base_model
    assert tuner16.hypernetwork.head.dtype == torch.float32
    errors16 = relative_errors(tuner16.generate_adapter(clips[0]), deltas, sorted(names))
    with capsys.disabled():
        print(f"bf16 VLM + fp32 hypernetwork, max relative error of ΔW per module kind: {errors16}")
    assert all(error <= 5e-2 for error in errors16.values()), errors16


def test_cuda_saved_reference_checkpoint_converts_on_a_cpu_machine(reference_classes, tiny_base_dir, tmp_path):
    import torch.serialization as serialization

    source = tmp_path / "cuda.pt"
    original = serialization.location_tag
    serialization.location_tag = lambda storage: "cuda:0"  # storages recorded as on the GPU, as in the real files
    try:
        write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    finally:
        serialization.location_tag = original
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(source, weights_only=False)
    output = convert_reference_checkpoint(source, tiny_base_dir, tmp_path / "out")
    assert (output / "adapter_model.safetensors").is_file()


def test_converted_directory_loads_with_automodel_in_a_fresh_process(
    reference_classes, tiny_base_dir, clips, tmp_path
):
    source = tmp_path / "frames2lora-tiny.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    output = convert_reference_checkpoint(source, tiny_base_dir, tmp_path / "frames2lora-tiny")
    from peft import AutoPeftModel

    expected = AutoPeftModel.from_pretrained(str(output)).base_model.generate_adapter(clips[0])
    save_file(expected, str(tmp_path / "expected.safetensors"))
    script = f"""
import torch, peft_hyper
from peft import AutoPeftModel
from safetensors.torch import load_file
model = AutoPeftModel.from_pretrained({str(output)!r})
model.internalize({clips[0]!r}, adapter_name="clip")
got = model.base_model.generate_adapter({clips[0]!r})
expected = load_file({str(tmp_path / "expected.safetensors")!r})
assert got.keys() == expected.keys()
assert all(torch.allclose(got[k], expected[k], rtol=1e-5, atol=1e-7) for k in got)
print("ok", model.base_model.hyper_config.architecture, model.base_model.generated_adapters)
"""
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok frames2lora ['clip']"


def test_model_card_records_source_licence_and_conversion(reference_classes, tiny_base_dir, tmp_path):
    from peft_hyper.convert_reference import sha256_of_file

    source = tmp_path / "frames2lora-smolvlm2-tiny-best-ce.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    output = convert_reference_checkpoint(source, output_dir=tmp_path / "frames2lora-tiny")
    card = (output / "README.md").read_text()
    assert "license: mit" in card and "base_model:" in card and "frames2lora" in card
    assert "frames2lora-smolvlm2-tiny-best-ce.pt" in card and sha256_of_file(source) in card
    assert "Manan Suri" in card and "Sakana AI" in card and "weights_only=True" in card
    assert "frames2lora convert frames2lora-smolvlm2-tiny-best-ce.pt" in card
    from peft import AutoPeftModel

    AutoPeftModel.from_pretrained(str(output)).save_pretrained(str(tmp_path / "resaved"))  # what push_to_hub uploads
    assert (tmp_path / "resaved" / "README.md").read_text() == card


# --- refusals ---------------------------------------------------------------------------------------------------------

PAYLOAD_MODULE = "frames2lora_test_payload"


def _run_payload(marker: str) -> None:
    Path(marker).write_text("executed")


def test_a_pickle_with_a_disallowed_global_is_refused_unexecuted(
    reference_classes, tiny_base_dir, tmp_path, monkeypatch
):
    marker = tmp_path / "executed.txt"

    class Payload:
        def __reduce__(self):
            return (_run_payload, (str(marker),))

    module = types.ModuleType(PAYLOAD_MODULE)
    module._run_payload = _run_payload
    _run_payload.__module__ = PAYLOAD_MODULE
    monkeypatch.setitem(sys.modules, PAYLOAD_MODULE, module)
    source = tmp_path / "trojan.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    state = torch.load(source, weights_only=False)  # the test's own file
    state["ctx_encoder_args"] = Payload()
    torch.save(state, source)
    _run_payload.__module__ = __name__
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=PAYLOAD_MODULE):
        convert_reference_checkpoint(source, output_dir=tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_reference_checkpoints_are_refused(tmp_path, tiny_base_dir):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ReferenceCheckpointError, match="not a torch checkpoint"):
        convert_reference_checkpoint(text, output_dir=tmp_path / "out")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ReferenceCheckpointError, match="no `hypernet_config`"):
        convert_reference_checkpoint(plain, output_dir=tmp_path / "out")
    with pytest.raises(ReferenceCheckpointError, match="No checkpoint file"):
        convert_reference_checkpoint(tmp_path / "missing.pt", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_or_inconsistent_checkpoints_are_refused(reference_classes, tiny_base_dir, tmp_path):
    source = tmp_path / "full.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ReferenceCheckpointError):
        convert_reference_checkpoint(truncated, output_dir=tmp_path / "out")
    state = torch.load(source, weights_only=False)
    del state["head.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ReferenceCheckpointError, match="extra.weight"):
        convert_reference_checkpoint(tmp_path / "edited.pt", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_reference_options_are_named(reference_classes, tiny_base_dir, tmp_path):
    source = tmp_path / "other-options.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir, num_pre_head_layers=2, shared_weights=True)
    with pytest.raises(UnsupportedReferenceOptionError) as error:
        convert_reference_checkpoint(source, output_dir=tmp_path / "out")
    assert "num_pre_head_layers=2" in str(error.value) and "shared_weights=True" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_base_with_other_feature_sizes_is_refused(reference_classes, tiny_base_dir, other_base_dir, tmp_path):
    source = tmp_path / "tiny.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    with pytest.raises(IncompatibleBaseModelError, match="hidden size 64 vs 96"):
        convert_reference_checkpoint(source, other_base_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_nothing_half_written(reference_classes, tiny_base_dir, tmp_path, monkeypatch):
    import peft_hyper.model_card as model_card

    source = tmp_path / "tiny.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("the previous contents")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_card, "render_converted_model_card", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_reference_checkpoint(source, output_dir=output)
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("tiny.pt",)] == ["out"]
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_cli_convert(reference_classes, tiny_base_dir, tmp_path, capsys):
    from peft_hyper.cli import main

    source = tmp_path / "tiny.pt"
    write_reference_checkpoint(source, reference_classes, tiny_base_dir)
    assert main(["convert", str(source), "--base", tiny_base_dir, "-o", str(tmp_path / "converted")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "converted" / "adapter_model.safetensors").is_file()
    (tmp_path / "bad.pt").write_text("nope")
    assert main(["convert", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "bad")]) == 2
    assert "error:" in capsys.readouterr().err


# --- training ----------------------------------------------------------------------------------------------------------


def test_reference_architecture_trains_with_hyperloratrainer(tiny_base_dir, clips, tmp_path):
    from datasets import Dataset
    from transformers import AutoProcessor, TrainingArguments

    from peft_hyper import HyperLoraTrainer

    torch.manual_seed(0)
    vlm = SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir)
    model = get_peft_model(vlm, reference_config(init_scale_b=0.0))
    model.set_processor(AutoProcessor.from_pretrained(tiny_base_dir))
    rows = [{"video": clip, "prompt": "Describe the video.", "target": f"Clip {i}."} for i, clip in enumerate(clips)]
    before = {n: p.detach().clone() for n, p in model.base_model.hypernetwork.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    trainer = HyperLoraTrainer(model, args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    changed = [n for n, p in model.base_model.hypernetwork.named_parameters() if not torch.equal(p, before[n])]
    assert "scale_b.mlp__down_proj" in changed
