"""Generated adapters resident in the model: replacement in place, several hypernetworks, threads, what stock PEFT
sees in an exported adapter, and refused inputs. Each test is a defect that once gave a silently wrong result."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from conftest import small_config
from peft import AutoPeftModel, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import IncompleteCheckpointError, InvalidAdapterError, PeftHyperError, load_video

QUESTION = "What colour is the square?"


def text_inputs(model) -> dict[str, torch.Tensor]:
    return model.text_inputs(QUESTION)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("names", [("xyz", "B"), ("xyz", "A"), ("clip2", "clip"), ("lora", "a")])
def test_replacing_an_adapter_in_place_leaves_every_other_adapter_as_it_was(hyper_model, clips, names):
    # PEFT's hotswap picks an adapter's weights by substring: replacing "B" zeroed "...lora_B.xyz...".
    kept, replaced = names
    inputs = text_inputs(hyper_model)
    hyper_model.internalize(clips[0], adapter_name=kept)
    expected = logits(hyper_model, inputs)
    kept_weights = hyper_model.base_model.adapters.state_dict(kept)
    hyper_model.internalize(clips[1], adapter_name=replaced)
    hyper_model.internalize(clips[2], adapter_name=replaced)
    for key, value in hyper_model.base_model.adapters.state_dict(kept).items():
        torch.testing.assert_close(value, kept_weights[key], rtol=0, atol=0)
    hyper_model.set_adapter(kept)
    torch.testing.assert_close(logits(hyper_model, inputs), expected, rtol=0, atol=0)
    hyper_model.set_adapter(replaced)  # and the replaced one now holds the third video's adapter
    for key, value in hyper_model.generate_adapter(clips[2]).items():
        torch.testing.assert_close(hyper_model.base_model.adapters.state_dict(replaced)[key], value, rtol=0, atol=0)


def test_replacing_in_place_keeps_the_parameters(hyper_model, clips):
    hyper_model.internalize(clips[0], adapter_name="slot")
    pointers = {n: p.data_ptr() for n, p in hyper_model.named_parameters() if ".lora_" in n}
    hyper_model.internalize(clips[1], adapter_name="slot")
    assert {n: p.data_ptr() for n, p in hyper_model.named_parameters() if ".lora_" in n} == pointers


def test_a_second_hypernetwork_on_other_modules_gives_working_adapters(vlm, clips, tiny_base_dir, tmp_path):
    model = get_peft_model(vlm, small_config())  # mlp.down_proj
    model.add_adapter("attn", small_config(target_modules=r".*text_model\.layers\.\d+\.self_attn\.o_proj"))
    inputs = text_inputs(model)
    base = logits(model, inputs)
    model.internalize(clips[0], adapter_name="mlp_clip")
    mlp = logits(model, inputs)
    model.set_adapter("attn")  # the second hypernetwork generates for o_proj
    model.internalize(clips[0], adapter_name="attn_clip")
    attn = logits(model, inputs)
    assert not torch.allclose(attn, base, atol=1e-4) and not torch.allclose(attn, mlp, atol=1e-4)
    assert set(model.base_model.targeted_module_names) >= {
        "model.text_model.layers.0.mlp.down_proj",
        "model.text_model.layers.0.self_attn.o_proj",
    }
    model.set_adapter("mlp_clip")
    torch.testing.assert_close(logits(model, inputs), mlp, rtol=0, atol=0)

    model.save_adapter("attn_clip", tmp_path / "attn_clip")
    stock = PeftModel.from_pretrained(
        SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir), tmp_path / "attn_clip"
    )
    torch.testing.assert_close(logits(stock.eval(), inputs), attn, rtol=1e-5, atol=1e-5)


def test_concurrent_calls_from_threads_give_the_sequential_results(hyper_model, clips):
    hyper_model.eval()
    expected = [hyper_model.generate_adapter(clip) for clip in clips]
    inputs = text_inputs(hyper_model)
    results: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for step in range(3):
                index = (thread + step) % len(clips)
                results[thread, step] = hyper_model.generate_adapter(clips[index])
                hyper_model.internalize(clips[index], adapter_name=f"t{thread}")
                logits(hyper_model, inputs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for (thread, step), state_dict in results.items():
        reference = expected[(thread + step) % len(clips)]
        assert set(state_dict) == set(reference)
        for key in reference:
            torch.testing.assert_close(state_dict[key], reference[key], rtol=0, atol=0)
    for thread in range(4):  # the adapter each thread left is its last video's
        last = expected[(thread + 2) % len(clips)]
        held = hyper_model.base_model.adapters.state_dict(f"t{thread}")
        for key in last:
            torch.testing.assert_close(held[key], last[key], rtol=0, atol=0)


def test_a_checkpoint_missing_weights_is_refused(hyper_model, tmp_path):
    hyper_model.save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "adapter_model.safetensors"
    weights = load_file(path)
    save_file({k: v for i, (k, v) in enumerate(sorted(weights.items())) if i % 2 == 0}, path)
    with pytest.raises(IncompleteCheckpointError, match="lacks"):
        AutoPeftModel.from_pretrained(tmp_path / "ckpt")


def test_exported_adapters_name_their_modules_and_leave_others_unchanged(hyper_model, clips, tmp_path):
    from peft_hyper.testing.models import build_tiny_smolvlm

    hyper_model.internalize(clips[0], adapter_name="clip")
    hyper_model.save_adapter("clip", tmp_path / "clip")
    config = json.loads((tmp_path / "clip" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(f"model.text_model.layers.{i}.mlp.down_proj" for i in range(3))
    assert config["init_lora_weights"] is True

    deeper, _ = build_tiny_smolvlm(seed=3, text_layers=5)  # same widths, two more decoder layers
    stock = PeftModel.from_pretrained(deeper, tmp_path / "clip")
    for layer in (3, 4):  # stock PEFT puts no LoRA (random or otherwise) on the layers the file does not cover
        module = stock.get_base_model().model.text_model.layers[layer].mlp.down_proj
        assert isinstance(module, torch.nn.Linear) and not hasattr(module, "lora_A")


@pytest.mark.parametrize(
    "make",
    [
        lambda sd: {k: v.numpy() for k, v in sd.items()},
        lambda sd: [*sd.values()],
        lambda sd: {},
        lambda sd: {k.replace("lora_A", "lora_X"): v for k, v in sd.items()},
        lambda sd: {k: v.to(torch.int64) for k, v in sd.items()},
        lambda sd: {k: v.tolist() for k, v in sd.items()},
    ],
    ids=["numpy", "list", "empty", "not-lora-keys", "integer", "nested-lists"],
)
def test_a_malformed_state_dict_is_refused_with_a_typed_error(hyper_model, clips, make):
    state_dict = make(hyper_model.generate_adapter(clips[0]))
    with pytest.raises(InvalidAdapterError):
        hyper_model.load_generated_adapter(state_dict, "clip")
    assert hyper_model.base_model.generated_adapters == []


def test_zero_frames_is_refused_not_read_as_the_default(hyper_model, clips):
    for frames in (0, -1):
        with pytest.raises(PeftHyperError):
            hyper_model.generate_adapter(clips[0], num_frames=frames)
        with pytest.raises(PeftHyperError):
            hyper_model.internalize(clips[0], adapter_name="clip", num_frames=frames)
    assert hyper_model.base_model.generated_adapters == []


def test_numpy_frames_are_refused_with_a_typed_error(hyper_model, clips):
    frames = load_video(clips[0], num_frames=4).frames.numpy()
    assert isinstance(frames, np.ndarray)
    with pytest.raises(PeftHyperError):
        hyper_model.generate_adapter(frames)
