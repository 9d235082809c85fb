"""A generated adapter saved with `save_adapter` is a plain PEFT LoRA directory: stock PEFT loads it in a process that
never imports peft_hyper, and its logits equal the internalized model's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file, save_file

STOCK_PEFT_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import SmolVLMForConditionalGeneration

    base_dir, adapter_dir, inputs_path, out_path = sys.argv[1:]
    base = SmolVLMForConditionalGeneration.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    inputs = load_file(inputs_path)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert not any(name.startswith("peft_hyper") for name in sys.modules), "peft_hyper was imported"
    save_file({"logits": logits.contiguous()}, out_path)
    """
)


def test_saved_adapter_loads_in_stock_peft_with_identical_logits(hyper_model, clips, tiny_base_dir, tmp_path):
    hyper_model.eval()
    hyper_model.internalize(clips[0], adapter_name="clip")
    inputs = {k: v.contiguous() for k, v in hyper_model.text_inputs("What moves?").items()}
    with torch.no_grad():
        expected = hyper_model(**inputs).logits

    adapter_dir = tmp_path / "adapters" / "clip"
    hyper_model.save_adapter("clip", adapter_dir)
    assert sorted(p.name for p in adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 8
    assert set(load_file(adapter_dir / "adapter_model.safetensors")) == set(hyper_model.generate_adapter(clips[0]))

    save_file(inputs, tmp_path / "inputs.safetensors")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            STOCK_PEFT_SCRIPT,
            tiny_base_dir,
            str(adapter_dir),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "logits.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stock = load_file(tmp_path / "logits.safetensors")["logits"]
    torch.testing.assert_close(stock, expected, rtol=0, atol=1e-5)
    with torch.no_grad(), hyper_model.disable_adapter():
        assert not torch.allclose(hyper_model(**inputs).logits, expected, atol=1e-4)  # the adapter matters
