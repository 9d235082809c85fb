"""The private PEFT (and CPython enum) internals peft-hyper relies on, checked against the installed versions.

Every private attribute the runtime touches is used in `generated_adapters.py` (LoRA layers' on/off switch, PEFT's
mixed-batch hooks) or `registration.py` (adding a `PeftType` member), plus the `BaseTuner` hooks `model.py`
overrides. If a PEFT upgrade renames or changes one of them, a test here fails with a message naming it — before any
behaviour silently changes.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from peft import LoraConfig, LoraModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.peft_types import PeftType
from torch import nn

from peft_hyper import HyperLoraModel


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _lora_model() -> LoraModel:
    torch.manual_seed(0)
    model = LoraModel(_Tiny(), LoraConfig(r=2, target_modules=["proj"], init_lora_weights=False), "a")
    model.eval()
    return model


def test_lora_layers_are_switched_off_by_their_disable_adapters_flag():
    model = _lora_model()
    layer = model.model.proj
    assert isinstance(layer, LoraLayer)
    assert hasattr(layer, "_disable_adapters"), "LoraLayer._disable_adapters is gone: update GeneratedAdapters"
    x = torch.randn(2, 4)
    with torch.no_grad():
        adapted = model.model(x)
        layer._disable_adapters = True
        assert layer.disable_adapters, "LoraLayer.disable_adapters no longer reads _disable_adapters"
        torch.testing.assert_close(model.model(x), layer.base_layer(x))
        layer._disable_adapters = False
        torch.testing.assert_close(model.model(x), adapted)


def test_lora_model_mixed_batch_hooks_take_adapter_names():
    model = _lora_model()
    hooks = getattr(model, "_enable_peft_forward_hooks", None)
    assert hooks is not None, "LoraModel._enable_peft_forward_hooks is gone: update GeneratedAdapters.mixed_batch"
    x = torch.randn(2, 4)
    with torch.no_grad():
        adapted = model.model(x)
        with hooks(adapter_names=["a", "__base__"]):
            mixed = model.model(x)
    torch.testing.assert_close(mixed[0], adapted[0])
    torch.testing.assert_close(mixed[1], model.model.proj.base_layer(x)[1])


def test_lora_model_adopts_a_peft_config_found_on_the_model():
    # GeneratedAdapters removes the tuner's `model.peft_config` while it creates its LoraModel because of this.
    model = _Tiny()
    model.peft_config = {"other": LoraConfig(r=1, target_modules=["proj"])}
    with pytest.warns(UserWarning, match="peft_config"):
        lora = LoraModel(model, LoraConfig(r=2, target_modules=["proj"]), "a")
    assert set(lora.peft_config) == {"other", "a"}


@pytest.mark.parametrize(
    "hook",
    [
        "_get_adapter_state_dict",
        "_remove_adapter_name_from_key",
        "_remap_adapter_state_dict_for_load",
        "_check_target_module_exists",
        "_create_and_replace",
        "_mark_only_adapters_as_trainable",
        "_check_new_adapter_config",
        "_cast_adapter_dtype",
        "inject_adapter",
    ],
)
def test_every_overridden_base_tuner_hook_still_exists_with_our_signature(hook):
    base = getattr(BaseTuner, hook, None)
    assert base is not None, f"BaseTuner.{hook} is gone: HyperLoraModel overrides a hook PEFT no longer calls"
    ours = inspect.signature(getattr(HyperLoraModel, hook))
    theirs = inspect.signature(base)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in ours.parameters.values()):
        return  # ours takes anything (it refuses to be called)
    required = [p.name for p in theirs.parameters.values() if p.default is inspect.Parameter.empty]
    assert [p for p in required if p not in ours.parameters] == [], f"BaseTuner.{hook}{theirs} changed"


def test_peft_type_enum_internals_used_to_add_a_member():
    for name in ("_member_map_", "_value2member_map_", "_member_names_"):
        assert hasattr(PeftType, name), f"PeftType.{name} is gone: update registration._add_peft_type_member"
    assert PeftType("HYPERLORA") is PeftType.HYPERLORA and "HYPERLORA" in PeftType.__members__
