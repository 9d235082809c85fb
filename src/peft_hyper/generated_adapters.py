"""Stage 6 of the data flow: generated LoRA adapters resident in the base model, held by an internal PEFT `LoraModel`.

A `HyperLoraModel` turns videos into PEFT LoRA state dicts; `GeneratedAdapters` keeps them in the base model the way
X-LoRA keeps its experts: a `peft.LoraModel` over the same base model (not a submodule of the tuner) whose LoRA layers
wrap the targeted linear layers. It loads, replaces in place, activates, switches on and off, deletes and saves
adapters, and routes mixed batches. Every use of a private PEFT attribute in peft-hyper's runtime lives in this file
(and in the `BaseTuner` hooks `model.py` implements, which are PEFT's extension points); `tests/test_peft_internals.py`
checks each of them against the installed PEFT, so an upgrade that moves one fails loudly there.

Keys: a generated adapter is a PEFT *file* state dict, `base_model.model.<module>.lora_A.weight` `(r, in)` and
`...lora_B.weight` `(out, r)` (what `PeftModel.save_pretrained` writes and stock `PeftModel.from_pretrained` reads).
Loading copies each tensor into the LoRA layer of `<module>`, and saving reads it back from there: the two mirror each
other and no key is ever rewritten into another form.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig, LoraModel
from peft.tuners.lora import LoraLayer
from torch import nn

from .lora import PEFT_MODEL_PREFIX, check_finite, lora_state_dict_keys

_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"


def module_name_of_key(key: str) -> tuple[str, str]:
    """`base_model.model.<module>.lora_A.weight` → (`<module>`, `"lora_A"`); the inverse of `lora_state_dict_keys`."""
    for suffix in (_LORA_A, _LORA_B):
        if key.startswith(PEFT_MODEL_PREFIX) and key.endswith(suffix):
            return key[len(PEFT_MODEL_PREFIX) : -len(suffix)], suffix[1:7]
    raise KeyError(key)


class GeneratedAdapters:
    """The generated LoRA adapters resident in `model`, by name.

    Args:
        model: the base model (the tuner's `model`); its targeted linear layers become PEFT `LoraLayer`s on the
            first load.
        owner_configs: the tuner's `peft_config` dict, which `BaseTuner` also sets as `model.peft_config`; kept there
            while the internal `LoraModel` is created (it would adopt it otherwise).

    Not thread-safe by itself: `HyperLoraModel` serialises every call that reaches it.
    """

    def __init__(self, model: nn.Module, owner_configs: dict[str, Any]) -> None:
        self.model = model
        self._owner_configs = owner_configs
        self._lora_model: LoraModel | None = None
        self._layer_cache: list[LoraLayer] | None = None
        self._modules: dict[str, frozenset[str]] = {}  # adapter name → the modules that hold it

    # ------------------------------------------------------------------ what is resident
    @property
    def names(self) -> list[str]:
        return [] if self._lora_model is None else list(self._lora_model.peft_config)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def config(self, name: str) -> LoraConfig:
        return self._lora_model.peft_config[name]

    @property
    def layers(self) -> list[LoraLayer]:
        """Every PEFT LoRA layer in the base model. Found again after each load or delete that changes the set of
        wrapped modules (a second hypernetwork may target other modules than the first)."""
        if self._layer_cache is None:
            self._layer_cache = [layer for _, layer in self._named_layers()]
        return self._layer_cache

    def _named_layers(self) -> Iterator[tuple[str, LoraLayer]]:
        if self._lora_model is None:
            return iter(())
        return ((path, m) for path, m in self.model.named_modules() if isinstance(m, LoraLayer))

    # ------------------------------------------------------------------ load / save / delete
    def load(self, name: str, state_dict: Mapping[str, torch.Tensor], lora_config: LoraConfig) -> None:
        """Put the PEFT LoRA `state_dict` (file keys) into the model as adapter `name`.

        A new name is injected with `lora_config` (PEFT wraps the targeted modules on the first adapter); an existing
        name that holds the same modules at the same rank is overwritten in place, parameter by parameter, so that the
        tensors other code holds (a compiled graph, an optimizer) stay the ones in use and no other adapter is
        touched. An existing name on other modules (another hypernetwork's) or of another rank is deleted and
        injected afresh.
        """
        modules = frozenset(module_name_of_key(key)[0] for key in state_dict)
        if name in self._modules and (self._modules[name] != modules or self.config(name).r != lora_config.r):
            self.delete(name)
        if name not in self._modules:
            self._inject(name, copy.deepcopy(lora_config))
            self._modules[name] = modules
        targets = {}
        for key, tensor in state_dict.items():
            module, part = module_name_of_key(key)
            layer = self.model.get_submodule(module)
            targets[key] = (getattr(layer, part)[name].weight, tensor)
        with torch.no_grad():
            for parameter, tensor in targets.values():
                parameter.copy_(tensor)

    def _inject(self, name: str, lora_config: LoraConfig) -> None:
        if self._lora_model is None:
            # BaseTuner adopts a `peft_config` it finds on the model; the internal LoRA model must get its own dict.
            del self.model.peft_config
            try:
                self._lora_model = LoraModel(self.model, lora_config, name)
            finally:
                self.model.peft_config = self._owner_configs
            self._lora_model.training = self.model.training  # PEFT allows mixed batches in eval mode only
        else:
            self._lora_model.peft_config[name] = lora_config
            self._lora_model.inject_adapter(self.model, name)
        self.model.requires_grad_(False)  # generated adapters are outputs, never trained
        self._layer_cache = None

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter `name` as a PEFT LoRA file state dict (what `load` takes), detached and contiguous."""
        state_dict = {}
        for module in sorted(self._modules[name]):
            layer = self.model.get_submodule(module)
            key_a, key_b = lora_state_dict_keys(module)
            state_dict[key_a] = layer.lora_A[name].weight.detach().contiguous()
            state_dict[key_b] = layer.lora_B[name].weight.detach().contiguous()
        return state_dict

    def save(self, name: str, save_directory: str | os.PathLike) -> None:
        """Write adapter `name` as a plain PEFT LoRA directory into `save_directory` (see `write_lora_directory`)."""
        write_lora_directory(self.state_dict(name), self.config(name), type(self.model), save_directory)

    def delete(self, name: str) -> None:
        self._lora_model.delete_adapter(name)
        del self._modules[name]
        self._layer_cache = None

    def merge(self, names: Sequence[str] | None = None) -> None:
        """Merge the active (or the given) adapters into the base weights (PEFT's merge)."""
        self._lora_model.merge_adapter(None if names is None else list(names))

    def unmerge(self) -> None:
        self._lora_model.unmerge_adapter()

    # ------------------------------------------------------------------ activation
    def activate(self, names: Sequence[str]) -> None:
        """Make `names` the active adapters of every LoRA layer (layers without one of them skip it) and switch
        generated adapters on."""
        for layer in self.layers:  # PEFT's per-layer switch on the cached layers, not a walk of the whole model
            layer.set_adapter(list(names), inference_mode=True)
        self._lora_model.active_adapter = names[0] if len(names) == 1 else list(names)
        self.set_enabled(True)

    def set_enabled(self, enabled: bool) -> None:
        # Only the switch is flipped: PEFT's `enable_adapters(True)` would also make the active adapters trainable.
        for layer in self.layers:
            layer._disable_adapters = not enabled

    @contextmanager
    def switched(self, enabled: bool) -> Iterator[None]:
        """Within the context generated adapters are on (`True`) or off; the previous state is restored after."""
        layers = self.layers
        previous = [layer._disable_adapters for layer in layers]
        self.set_enabled(enabled)
        try:
            yield
        finally:
            for layer, was_disabled in zip(layers, previous, strict=True):
                layer._disable_adapters = was_disabled

    @contextmanager
    def mixed_batch(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Within the context, a forward with `adapter_names=[...]` (one name per sample, `"__base__"` for none)
        applies each sample's adapter: PEFT's own mixed-batch hooks, with generated adapters switched on."""
        with self.switched(True), self._lora_model._enable_peft_forward_hooks(*args, **kwargs):
            yield

    def set_training(self, mode: bool) -> None:
        if self._lora_model is not None:  # not a submodule of the tuner, so `nn.Module.train` does not reach it
            self._lora_model.training = mode


def write_lora_directory(
    state_dict: Mapping[str, torch.Tensor],
    config: LoraConfig,
    base_model_class: type,
    save_directory: str | os.PathLike,
) -> None:
    """Write a PEFT LoRA state dict (file keys) and its `LoraConfig` as a plain PEFT LoRA directory
    (`adapter_config.json` + `adapter_model.safetensors`, with the `auto_mapping` `AutoPeftModel` reads) into
    `save_directory`, which the caller has made (e.g. a staging directory)."""
    from safetensors.torch import save_file

    check_finite(state_dict, "adapter")
    tensors = {key: value.detach().contiguous() for key, value in state_dict.items()}
    save_file(tensors, os.path.join(save_directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(
        str(save_directory),
        auto_mapping_dict={
            "base_model_class": base_model_class.__name__,
            "parent_library": base_model_class.__module__,
        },
    )


def check_lora_state_dict(state_dict: Any, what: str) -> None:
    """Raise `InvalidAdapterError` unless `state_dict` maps PEFT LoRA file keys to finite floating-point tensors."""
    from .errors import InvalidAdapterError

    if not isinstance(state_dict, Mapping) or not state_dict:
        raise InvalidAdapterError(
            f"The {what} must be a non-empty dict of PEFT LoRA keys to tensors (as `generate_adapter` returns or "
            f"`safetensors.torch.load_file` reads), got {type(state_dict).__name__}."
        )
    for key, tensor in state_dict.items():
        if not isinstance(key, str):
            raise InvalidAdapterError(f"The {what} has a key of type {type(key).__name__}; keys are strings.")
        try:
            module_name_of_key(key)
        except KeyError:
            raise InvalidAdapterError(
                f"The {what} has key '{key}', which is not a PEFT LoRA key ('base_model.model.<module>.lora_A.weight' "
                "or '...lora_B.weight'). Pass the state dict of a generated adapter."
            ) from None
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = type(tensor).__name__ if not isinstance(tensor, torch.Tensor) else f"tensor of {tensor.dtype}"
            raise InvalidAdapterError(
                f"The {what} holds a {kind} at '{key}'; LoRA weights are floating-point torch tensors (convert a "
                "numpy array with `torch.from_numpy`)."
            )
    check_finite(state_dict, what)
