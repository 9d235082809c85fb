"""Stage 5 of the data flow: generated LoRA factors → a standard PEFT LoRA adapter (state dict + `LoraConfig`).

The exported `lora_alpha` equals the rank, so PEFT's scaling `lora_alpha / r` is exactly 1 and `B @ A` is the
generated ΔW with nothing folded in at load time (the reference instead scales by `lora_alpha = 2·r^1.5` in a patched
forward; we fold that freedom into the hypernetwork's learned output scales).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft import LoraConfig

from .errors import NonFiniteAdapterError

PEFT_MODEL_PREFIX = "base_model.model."


def lora_state_dict_keys(module_name: str) -> tuple[str, str]:
    """The keys PEFT's `save_pretrained` writes for the LoRA A and B of base-model module `module_name`."""
    return (f"{PEFT_MODEL_PREFIX}{module_name}.lora_A.weight", f"{PEFT_MODEL_PREFIX}{module_name}.lora_B.weight")


def build_lora_config(rank: int, target_modules: list[str], base_model_name_or_path: str | None = None) -> LoraConfig:
    """The `LoraConfig` every generated adapter of a hypernetwork belongs to: scaling exactly 1, the exact names of
    the targeted modules, and PEFT's zero-delta initialisation (B = 0), so that a module the adapter file does not
    cover is left unchanged wherever the file is loaded."""
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=target_modules,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )


def factors_to_state_dicts(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """name → (A `(B, r, in)`, B `(B, out, r)`) → one PEFT LoRA state dict per batch item (detached, contiguous)."""
    batch = next(iter(factors.values()))[0].shape[0]
    state_dicts: list[dict[str, torch.Tensor]] = [{} for _ in range(batch)]
    for name, (lora_a, lora_b) in factors.items():
        key_a, key_b = lora_state_dict_keys(name)
        for item, state_dict in enumerate(state_dicts):
            state_dict[key_a] = lora_a[item].detach().contiguous()
            state_dict[key_b] = lora_b[item].detach().contiguous()
    return state_dicts


def check_finite(state_dict: Mapping[str, torch.Tensor], what: str = "adapter") -> None:
    """Raise `NonFiniteAdapterError` naming the first tensor with NaN or inf values."""
    if not state_dict:
        return
    # One reduction per tensor and one check overall (NaN/inf propagate through sums); locate only on failure.
    if torch.stack([tensor.float().sum() for tensor in state_dict.values()]).isfinite().all():
        return
    for key, tensor in state_dict.items():
        if not torch.isfinite(tensor).all():
            raise NonFiniteAdapterError(
                f"The {what} has NaN or infinite values in '{key}'. If it was generated, check the hypernetwork "
                "weights (e.g. a diverged training run) and the input video; nothing was loaded."
            )
