"""Convert the reference Frames2LoRA's released `.pt` checkpoints into Hub-ready peft-hyper checkpoints.

`convert_reference_checkpoint(path, base_model_name_or_path=None, output_dir=...)` (CLI: `frames2lora convert`):

1. read the file safely (`read_reference_checkpoint`): `torch.load(weights_only=True)` with the file's non-tensor
   globals mapped to inert stand-ins, and only those on `ALLOWED_GLOBALS` (the reference's pickled config classes and
   the peft config types); a file naming any other global is refused before anything is unpickled;
2. check that it is a reference checkpoint trained with options we implement, and that the base model's text decoder
   has the stored feature sizes and layer count (typed errors that say which);
3. build `HyperLoraConfig(architecture="frames2lora", ...)` on a meta-device copy of the base (no base weights are
   read), load the tensors into `ReferenceHyperNetwork` under our names, and
4. write `adapter_config.json`, `adapter_model.safetensors`, the base's processor and a model card, all at once
   (`saving.atomic_directory`: a failed conversion leaves nothing half-written).

The converted hypernetwork computes the reference's adapters (tested to 1e-5 against an independent implementation
of the reference's math in `tests/test_reference.py`).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import (
    IncompatibleBaseModelError,
    MissingProcessorError,
    ReferenceCheckpointError,
    UnsafeCheckpointError,
    UnsupportedReferenceOptionError,
)

REFERENCE_REPOSITORY = "https://github.com/frames2lora/Frames2LoRA"
COMPILED_PREFIX = "_orig_mod."  # what torch.compile puts before every parameter name
# The reference trained with these input settings (scripts/frames2lora: 12 frames, 384 px, its fixed instruction).
REFERENCE_NUM_FRAMES = 12
REFERENCE_VIDEO_SIZE = 384
# The reference's Idefics2 perceiver attention shape (`Idefics2PerceiverConfig` defaults, not stored in the file).
REFERENCE_HEADS, REFERENCE_KV_HEADS, REFERENCE_HEAD_DIM, REFERENCE_FF_MULT = 16, 4, 128, 4


class InertRecord:
    """An attribute bag standing in for a pickled class of the reference or of peft. Unpickling builds it with
    `__new__` + `__setstate__` (dataclasses) or by a call with the member's value (enums, kept as `.value`); it has no
    other behaviour, so nothing of the class it stands for is imported or run."""

    qualified_name = "?"

    def __init__(self, *args: Any) -> None:
        if args:
            self.value = args[0]

    def __setstate__(self, state: Any) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        self.__dict__.update(state or {})
        self.__dict__.update(slots or {})

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in sorted(self.__dict__.items()))
        return f"<{self.qualified_name} stand-in: {fields}>"


ALLOWED_GLOBALS = (
    "ctx_to_lora.modeling.hypernet.HypernetConfig",
    "ctx_to_lora.modeling.aggregator.AggregatorConfig",
    "ctx_to_lora.modeling.aggregator.AGGREGATOR_TYPE",
    "ctx_to_lora.configs.CtxEncoderArguments",
    "peft.tuners.lora.config.LoraConfig",
    "peft.tuners.lora.config.LoraRuntimeConfig",
    "peft.utils.peft_types.PeftType",
    "peft.utils.peft_types.TaskType",
)
"""The non-tensor globals a reference checkpoint may name: its config classes and the peft config types it pickles
(`torch.serialization.get_unsafe_globals_in_checkpoint` on a reference-format file lists a subset)."""

STAND_INS: dict[str, type[InertRecord]] = {
    name: type(name.rsplit(".", 1)[1], (InertRecord,), {"qualified_name": name, "__module__": __name__})
    for name in ALLOWED_GLOBALS
}


@dataclass
class ReferenceCheckpoint:
    """What a reference checkpoint holds, read safely.

    Attributes:
        tensors: the hypernetwork's tensors under the reference's keys (`_orig_mod.` prefixes removed), on the CPU.
        hypernet_config: the stand-in of its `HypernetConfig` (attributes as pickled).
        base_model_name_or_path: the base the reference trained on (and refuses any other).
        ctx_encoder_args: the stand-in of its `CtxEncoderArguments`, or None.
    """

    tensors: dict[str, torch.Tensor]
    hypernet_config: InertRecord
    base_model_name_or_path: str | None
    ctx_encoder_args: InertRecord | None = None


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_reference_checkpoint(path: str | os.PathLike) -> ReferenceCheckpoint:
    """Read a reference `.pt` file with `torch.load(weights_only=True)`; see the module docstring.

    Raises:
        UnsafeCheckpointError: the file names a global outside `ALLOWED_GLOBALS` (nothing was unpickled).
        ReferenceCheckpointError: no such file, not a torch archive, truncated, or not the reference's layout.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(f"No checkpoint file at '{path}'. Pass the path of a reference .pt file.")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:  # not a zip archive, or no pickle in it
        raise ReferenceCheckpointError(
            f"'{path}' is not a torch checkpoint archive ({type(exc).__name__}: {exc}); pass a reference Frames2LoRA "
            ".pt file as the reference's `torch.save(model.state_dict())` writes it."
        ) from exc
    refused = sorted(set(names) - set(ALLOWED_GLOBALS))
    if refused:
        raise UnsafeCheckpointError(
            f"'{path}' names Python globals that a reference Frames2LoRA checkpoint does not hold: {refused}. Loading "
            "them could run code, so the file was not unpickled. Convert only files from a source you trust, as "
            "released (frames2lora-smolvlm2-500m-best-ce.pt, frames2lora-smolvlm2-2.2b-best-ce.pt)."
        )
    stand_ins = [(STAND_INS[name], name) for name in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ReferenceCheckpointError(
            f"'{path}' cannot be read as a reference checkpoint ({type(exc).__name__}: {exc}); it is truncated or "
            "corrupt. Download it again."
        ) from exc
    return _parse_state(state, path)


def _parse_state(state: Any, path: Path) -> ReferenceCheckpoint:
    hypernet_config = state.get("hypernet_config") if isinstance(state, dict) else None
    if not isinstance(hypernet_config, STAND_INS["ctx_to_lora.modeling.hypernet.HypernetConfig"]):
        raise ReferenceCheckpointError(
            f"'{path}' has no `hypernet_config` (a ctx_to_lora HypernetConfig): it is not a reference Frames2LoRA "
            "checkpoint. A peft-hyper checkpoint is a directory; load it with `AutoPeftModel.from_pretrained`."
        )
    tensors = {key.removeprefix(COMPILED_PREFIX): v for key, v in state.items() if isinstance(v, torch.Tensor)}
    base = state.get("base_model_name_or_path")
    ctx_args = state.get("ctx_encoder_args")
    return ReferenceCheckpoint(
        tensors=tensors,
        hypernet_config=hypernet_config,
        base_model_name_or_path=base if isinstance(base, str) else None,
        ctx_encoder_args=ctx_args if isinstance(ctx_args, InertRecord) else None,
    )


def _value(option: Any) -> Any:
    """An enum stand-in's value (or the option itself)."""
    return option.value if isinstance(option, InertRecord) and "value" in vars(option) else option


def _reference_options(checkpoint: ReferenceCheckpoint) -> dict[str, Any]:
    """The options the conversion depends on, read from the stored configs; raises for values we do not implement."""
    hc = checkpoint.hypernet_config
    aggregator = getattr(hc, "aggregator_config", None)
    lora = getattr(hc, "lora_config", None)
    if aggregator is None or lora is None:
        raise ReferenceCheckpointError(
            "The checkpoint's HypernetConfig has no aggregator_config or lora_config: not a reference Frames2LoRA "
            "hypernetwork."
        )
    rank = int(getattr(lora, "r", 0))
    alpha = float(getattr(lora, "lora_alpha", 0))
    targets = sorted(_value(getattr(lora, "target_modules", None)) or [])
    num_pre_head = getattr(hc, "num_pre_head_layers", None)
    # (option, value found, value implemented); the reference fills a missing num_pre_head_layers with 4, use_bias True
    wanted = [
        ("HypernetConfig.per_rank_gen", getattr(hc, "per_rank_gen", None), True),
        ("HypernetConfig.use_light_weight_lora", getattr(hc, "use_light_weight_lora", False), False),
        ("HypernetConfig.per_layer_processing", getattr(hc, "per_layer_processing", False), False),
        ("HypernetConfig.use_token_mixing", getattr(hc, "use_token_mixing", False), False),
        ("HypernetConfig.use_per_rank_bias", getattr(hc, "use_per_rank_bias", False) or False, False),
        ("HypernetConfig.num_pre_head_layers", 4 if num_pre_head is None else num_pre_head, 1),
        ("HypernetConfig.extra_modules", list(getattr(hc, "extra_modules", None) or []), []),
        ("AggregatorConfig.aggregator_type", _value(getattr(aggregator, "aggregator_type", None)), "perceiver"),
        ("AggregatorConfig.num_self_attn_per_block", getattr(aggregator, "num_self_attn_per_block", 0), 0),
        ("AggregatorConfig.shared_weights", getattr(aggregator, "shared_weights", False), False),
        ("AggregatorConfig.layer_to_layer_ctx_encoder", getattr(aggregator, "layer_to_layer_ctx_encoder", None), True),
        ("AggregatorConfig.num_extra_modules", getattr(aggregator, "num_extra_modules", 0), 0),
        ("LoraConfig.lora_alpha", alpha, 2 * rank**1.5),
        ("LoraConfig.use_dora", getattr(lora, "use_dora", False), False),
        ("LoraConfig.use_rslora", getattr(lora, "use_rslora", False), False),
    ]
    last_layer = getattr(checkpoint.ctx_encoder_args, "ctx_encoder_last_layer", None)
    wanted.append(("CtxEncoderArguments.ctx_encoder_last_layer", last_layer, None))
    unsupported = [
        f"{name}={found!r} (implemented: {expected!r})"
        for name, found, expected in wanted
        if not (math.isclose(found, expected, rel_tol=1e-6) if name == "LoraConfig.lora_alpha" else found == expected)
    ]
    if rank < 1 or not targets:
        unsupported.append(f"LoraConfig.r={rank!r}, target_modules={targets!r} (a rank >= 1 and target names)")
    if unsupported:
        raise UnsupportedReferenceOptionError(
            "The checkpoint was trained with reference options that peft-hyper does not implement: "
            + "; ".join(unsupported)
            + ". Only the released Frames2LoRA configuration (per-rank generation, one pre-head block, a perceiver "
            "over each layer's states, lora_alpha 2·r^1.5) converts."
        )
    layer_indices = getattr(hc, "layer_indices", None)
    layer_indices = layer_indices.tolist() if isinstance(layer_indices, torch.Tensor) else list(layer_indices or [])
    feature_sizes = getattr(hc, "feature_sizes", None)
    if not (isinstance(feature_sizes, (tuple, list)) and len(feature_sizes) == 2):
        raise ReferenceCheckpointError(
            f"The checkpoint's feature_sizes {feature_sizes!r} are not (in sizes, out sizes)."
        )
    try:
        return _stored_sizes(hc, aggregator, layer_indices, feature_sizes) | {
            "rank": rank,
            "lora_alpha": alpha,
            "targets": targets,
        }
    except (AttributeError, TypeError, ValueError) as exc:
        raise ReferenceCheckpointError(f"The checkpoint's HypernetConfig is incomplete ({exc}).") from exc


def _stored_sizes(hc: Any, aggregator: Any, layer_indices: list[Any], feature_sizes: Any) -> dict[str, Any]:
    return {
        "use_bias": getattr(hc, "use_bias", None) is not False,
        "latent_size": int(hc.latent_size),
        "base_hidden_size": int(hc.base_hidden_size),
        "layer_indices": [int(index) for index in layer_indices],
        "in_features": dict(feature_sizes[0]),
        "out_features": dict(feature_sizes[1]),
        "num_latents": int(aggregator.n_latent_queries),
        "num_blocks": int(aggregator.num_blocks),
    }


def _check_base(options: dict[str, Any], text_config: Any, targets: list[Any], base: str) -> None:
    """Refuse a base whose text decoder differs from what the checkpoint stores (hidden size, layers, module shapes)."""
    problems = []
    if options["base_hidden_size"] != text_config.hidden_size:
        problems.append(f"hidden size {options['base_hidden_size']} vs {text_config.hidden_size}")
    layers = options["layer_indices"]
    if layers != list(range(text_config.num_hidden_layers)):
        problems.append(f"{len(layers)} decoder layers vs {text_config.num_hidden_layers}")
    for target in targets:
        name = target.kind.rsplit(".", 1)[-1]
        stored = (options["in_features"].get(name), options["out_features"].get(name))
        if stored != (target.in_features, target.out_features):
            problems.append(f"{name} (in, out) {stored} vs {(target.in_features, target.out_features)}")
            break
    if problems:
        raise IncompatibleBaseModelError(
            f"The checkpoint was trained on a base whose text decoder differs from '{base}' ("
            + "; ".join(problems)
            + f"). Pass the base it was trained on with --base (the file names "
            f"{options.get('stored_base')!r})."
        )


def reference_to_peft_hyper_keys(
    tensors: dict[str, torch.Tensor], kinds: list[str], use_bias: bool
) -> dict[str, torch.Tensor]:
    """The reference's tensors under `ReferenceHyperNetwork`'s parameter names (shapes adapted where the layouts
    differ: the head always has a kinds axis, the scales are `(L, r)`). Raises for a missing or unexpected tensor."""
    by_name = {kind.rsplit(".", 1)[-1]: kind.replace(".", "__") for kind in kinds}
    pre_head = {"0": "norm_in", "2": "up", "5": "down", "6": "norm_out"}
    mapped, unexpected = {}, []
    for key, tensor in tensors.items():
        module, _, rest = key.partition(".")
        if key.startswith("aggregator.perceiver.modality_projection."):
            mapped["context_proj." + key.removeprefix("aggregator.perceiver.modality_projection.")] = tensor
        elif key.startswith(("aggregator.perceiver.encoder.", "aggregator.perceiver.decoder.")):
            mapped[key.removeprefix("aggregator.perceiver.")] = tensor
        elif match := re.fullmatch(r"layers\.0\.mlp\.(\d)\.(weight|bias)", key):
            if match.group(1) not in pre_head:
                unexpected.append(key)
                continue
            mapped[f"pre_head.{pre_head[match.group(1)]}.{match.group(2)}"] = tensor
        elif key == "head.weight":
            mapped["head"] = tensor[:, None] if tensor.ndim == 3 else tensor
        elif module in ("scaler_A", "scaler_B") and rest in by_name:
            mapped[f"scale_{module[-1].lower()}.{by_name[rest]}"] = tensor.reshape(tensor.shape[1], tensor.shape[2])
        elif module in ("bias_A", "bias_B") and rest in by_name:
            if use_bias:
                mapped[f"bias_{module[-1].lower()}.{by_name[rest]}"] = tensor
        else:
            unexpected.append(key)
    if unexpected:
        raise ReferenceCheckpointError(
            f"The checkpoint holds tensors the reference hypernetwork does not have, e.g. {unexpected[:3]}: it was "
            "written by another version or architecture."
        )
    return mapped


def convert_reference_checkpoint(
    path: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    output_dir: str | os.PathLike | None = None,
) -> Path:
    """Convert a reference Frames2LoRA `.pt` checkpoint into a peft-hyper checkpoint directory.

    Args:
        path: the reference file, e.g. `frames2lora-smolvlm2-2.2b-best-ce.pt`.
        base_model_name_or_path: the base VLM (Hub id or local directory); `None` uses the one named in the file.
            Only its config and processor are read.
        output_dir: the directory to write (replaced whole if it exists); required.

    Returns:
        The output directory, holding `adapter_config.json`, `adapter_model.safetensors`, the base's processor files
        and `README.md`; `AutoPeftModel.from_pretrained(output_dir)` loads it (after `import peft_hyper`).

    Raises:
        UnsafeCheckpointError / ReferenceCheckpointError / UnsupportedReferenceOptionError: see
        [`read_reference_checkpoint`] and the options named in the message.
        IncompatibleBaseModelError: the base's text decoder does not have the stored sizes or layer count.
        MissingProcessorError: no processor could be loaded for the base.
    """
    if output_dir is None:
        raise ValueError("Pass output_dir: the directory to write the converted checkpoint to.")
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from .config import HyperLoraConfig
    from .model import find_lora_targets
    from .model_card import render_converted_model_card
    from .reference_hypernetwork import reference_kind_order
    from .saving import atomic_directory, atomic_write_text, final_path

    checkpoint = read_reference_checkpoint(path)
    options = _reference_options(checkpoint)
    options["stored_base"] = checkpoint.base_model_name_or_path
    base = base_model_name_or_path or checkpoint.base_model_name_or_path
    if not base:
        raise ReferenceCheckpointError("The checkpoint names no base model; pass one with --base.")
    if os.path.isdir(base):
        base = str(Path(base).resolve())  # the adapter config must name it wherever the output is loaded from
    base_config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        vlm = AutoModelForImageTextToText.from_config(base_config)
    names = "|".join(re.escape(name) for name in options["targets"])
    target_regex = rf".*text_model\.layers\.\d+\.(?:[\w.]+\.)?(?:{names})"
    targets = find_lora_targets(vlm, target_regex)
    _check_base(options, base_config.get_text_config(), targets, base)
    kinds = reference_kind_order({t.kind for t in targets})
    if [kind.rsplit(".", 1)[-1] for kind in kinds] != options["targets"]:
        raise IncompatibleBaseModelError(
            f"The base '{base}' has no text-decoder modules named {options['targets']} (found {kinds})."
        )
    try:
        processor = AutoProcessor.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise MissingProcessorError(
            f"No processor could be loaded from '{base}' ({exc}); pass a complete base."
        ) from exc

    config = HyperLoraConfig(
        architecture="frames2lora",
        r=options["rank"],
        bias_rank=options["rank"] if options["use_bias"] else 0,
        target_modules=rf".*text_model\.layers\.\d+\.(?:{'|'.join(re.escape(kind) for kind in kinds)})",
        latent_dim=options["latent_size"],
        num_latents=options["num_latents"],
        num_blocks=options["num_blocks"],
        num_heads=REFERENCE_HEADS,
        num_key_value_heads=REFERENCE_KV_HEADS,
        head_dim=REFERENCE_HEAD_DIM,
        ff_mult=REFERENCE_FF_MULT,
        num_frames=REFERENCE_NUM_FRAMES,
        video_size=REFERENCE_VIDEO_SIZE,
        base_model_name_or_path=base,
    )
    model = get_peft_model(vlm, config)
    hypernetwork = model.base_model.hypernetwork
    state = reference_to_peft_hyper_keys(checkpoint.tensors, hypernetwork.kinds, options["use_bias"])
    expected = {name: tuple(p.shape) for name, p in hypernetwork.named_parameters()}
    got = {name: tuple(t.shape) for name, t in state.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:3]
        wrong = [(name, got[name], expected[name]) for name in expected if name in got and got[name] != expected[name]]
        raise ReferenceCheckpointError(
            f"The checkpoint's tensors do not fit its own configuration (missing {missing}, wrong shapes {wrong[:3]}): "
            "it is truncated or was edited. Download it again."
        )
    hypernetwork.load_state_dict({name: t.float().contiguous() for name, t in state.items()}, assign=True)
    model.base_model.set_processor(processor)
    source = Path(path)
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(str(staging))
        card = render_converted_model_card(
            config,
            repo_id=final_path(staging).resolve().name,
            source_file=source.name,
            source_sha256=sha256_of_file(source),
            stored_base=checkpoint.base_model_name_or_path,
            options=options,
            num_parameters=sum(p.numel() for p in hypernetwork.parameters()),
        )
        atomic_write_text(staging / "README.md", str(card))
    return Path(output_dir)
