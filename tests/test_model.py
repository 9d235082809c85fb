"""The user-facing API of HyperLoraModel through PEFT: get_peft_model, generate_adapter, internalize, set_adapter,
save/load, hotswap, mixed-adapter batches and bad input."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import small_config
from peft import AutoPeftModel, LoraConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.lora import LoraLayer
from peft.utils.peft_types import PeftType
from PIL import Image
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import (
    HyperLoraConfig,
    HyperLoraModel,
    IncompatibleBaseModelError,
    InvalidAdapterNameError,
    NonFiniteAdapterError,
    VideoDecodeError,
    load_video,
)
from peft_hyper.data import VideoTextCollator
from peft_hyper.hidden_states import stream_decoder_layer_inputs
from peft_hyper.inputs import HypernetworkInputSpec

QUESTION = "What colour is the square?"


def text_inputs(model, question: str = QUESTION) -> dict[str, torch.Tensor]:
    return model.text_inputs(question)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_registered_as_a_peft_type():
    assert PeftType.HYPERLORA == "HYPERLORA"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.HYPERLORA] is HyperLoraConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.HYPERLORA] is HyperLoraModel


def test_config_defaults_follow_the_reference():
    config = HyperLoraConfig()
    assert (config.r, config.latent_dim, config.num_latents, config.num_blocks) == (16, 512, 8, 9)
    assert config.num_frames == 12 and config.bias_rank == 16 and config.total_rank == 32
    assert config.init_scale_a == 1.0 and config.init_scale_b == 0.0
    with pytest.raises(ValueError, match="task_type"):
        HyperLoraConfig(task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="positive integer"):
        HyperLoraConfig(r=0)


def test_get_peft_model_trains_only_the_hypernetwork(hyper_model):
    assert isinstance(hyper_model, PeftModel)
    assert isinstance(hyper_model.base_model, HyperLoraModel)
    trainable = {name for name, p in hyper_model.named_parameters() if p.requires_grad}
    assert trainable and all(".hypernetworks.default." in name for name in trainable)
    assert not any(p.requires_grad for p in hyper_model.get_base_model().parameters())


def test_target_regex_cannot_hit_the_vision_tower(vlm):
    with pytest.raises(ValueError, match="outside the text decoder"):
        get_peft_model(vlm, small_config(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="matches no linear layer"):
        get_peft_model(vlm, small_config(target_modules=r".*nothing_here"))


def test_zero_init_gives_a_zero_delta(vlm, clips):
    model = get_peft_model(vlm, small_config(init_scale_b=0.0))
    inputs = text_inputs(model)
    before = logits(model, inputs)
    state_dict = model.generate_adapter(clips[0])
    assert all(not v.any() for k, v in state_dict.items() if "lora_B" in k)
    model.internalize(clips[0], adapter_name="clip")
    torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=0)


def test_generate_adapter_is_a_standard_peft_lora_state_dict(hyper_model, clips):
    state_dict = hyper_model.generate_adapter(clips[0])
    lora_config = hyper_model.lora_config
    assert isinstance(lora_config, LoraConfig)
    assert lora_config.r == lora_config.lora_alpha == 8  # r + bias_rank; PEFT scaling is exactly 1
    text_config = hyper_model.get_base_model().config.text_config
    assert len(state_dict) == 2 * text_config.num_hidden_layers
    for layer in range(text_config.num_hidden_layers):
        prefix = f"base_model.model.model.text_model.layers.{layer}.mlp.down_proj"
        assert state_dict[f"{prefix}.lora_A.weight"].shape == (8, text_config.intermediate_size)
        assert state_dict[f"{prefix}.lora_B.weight"].shape == (text_config.hidden_size, 8)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state_dict.values())
    other = hyper_model.generate_adapter(clips[1])
    assert any(not torch.equal(state_dict[k], other[k]) for k in state_dict)  # the adapter depends on the video


def test_every_input_form_gives_the_same_adapter(hyper_model, clips):
    reference = hyper_model.generate_adapter(clips[0])
    data = Path(clips[0]).read_bytes()
    for source in (data, io.BytesIO(data)):
        generated = hyper_model.generate_adapter(source)
        for key in reference:
            torch.testing.assert_close(generated[key], reference[key], rtol=0, atol=0)
    frames = load_video(clips[0], num_frames=16).frames
    from_tensor = hyper_model.generate_adapter(frames, num_frames=4)
    from_pil = hyper_model.generate_adapter(
        [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames], num_frames=4
    )
    for key in reference:
        torch.testing.assert_close(from_pil[key], from_tensor[key], rtol=0, atol=0)


def test_frame_count_and_fps_are_per_call_overridable(hyper_model, clips):
    tuner = hyper_model.base_model
    image_token = tuner.processor.image_token_id
    for count in (2, 6):
        inputs = tuner.hypernetwork_inputs([load_video(clips[0], num_frames=count)])
        assert (inputs["input_ids"] == image_token).sum() == count * tuner.processor.image_seq_len
        assert inputs["pixel_values"].shape[1] == count
    default = hyper_model.generate_adapter(clips[0])
    by_fps = hyper_model.generate_adapter(clips[0], fps=1.0)  # 2 s clip → 2 frames
    assert any(not torch.equal(default[k], by_fps[k]) for k in default)


def test_a_batch_is_one_forward_and_equals_single_calls(hyper_model, clips, monkeypatch):
    tuner = hyper_model.base_model
    calls = []
    original = tuner.generate_lora_factors
    monkeypatch.setattr(tuner, "generate_lora_factors", lambda inputs, **kw: calls.append(1) or original(inputs, **kw))
    batch = hyper_model.generate_adapter(clips)
    assert len(calls) == 1 and isinstance(batch, list) and len(batch) == 3
    for clip, generated in zip(clips, batch, strict=True):
        single = hyper_model.generate_adapter(clip)
        for key in single:
            torch.testing.assert_close(generated[key], single[key], rtol=1e-5, atol=1e-5)


def test_streamed_layer_inputs_equal_the_output_hidden_states(hyper_model, clips):
    tuner = hyper_model.base_model
    inputs = tuner.hypernetwork_inputs([load_video(clips[0], num_frames=3)])
    seen: dict[int, torch.Tensor] = {}
    stream_decoder_layer_inputs(tuner.model, inputs, [0, 2], lambda layer, states: seen.__setitem__(layer, states))
    with torch.no_grad():
        reference = tuner.model.model(**inputs, output_hidden_states=True).hidden_states
    assert sorted(seen) == [0, 2]
    for layer, states in seen.items():
        torch.testing.assert_close(states, reference[layer], rtol=0, atol=0)  # states *entering* layer l


def test_internalize_activates_an_adapter_and_answers_without_visual_tokens(hyper_model, clips):
    inputs = text_inputs(hyper_model)
    base = logits(hyper_model, inputs)
    state_dict = hyper_model.internalize(clips[0], adapter_name="clip")
    assert set(state_dict) == set(hyper_model.generate_adapter(clips[0]))
    assert hyper_model.active_adapters == ["clip"]  # PeftModel.active_adapters reads the tuner
    assert "pixel_values" not in inputs
    assert not (inputs["input_ids"] == hyper_model.processor.image_token_id).any()
    adapted = logits(hyper_model, inputs)
    assert not torch.allclose(adapted, base)
    output = hyper_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 4)


def test_set_adapter_switches_among_internalized_videos(hyper_model, clips):
    inputs = text_inputs(hyper_model)
    base = logits(hyper_model, inputs)
    hyper_model.internalize(clips[0], adapter_name="first")
    first = logits(hyper_model, inputs)
    hyper_model.internalize(clips[1], adapter_name="second")
    second = logits(hyper_model, inputs)
    assert not torch.allclose(first, second)
    hyper_model.set_adapter("first")
    torch.testing.assert_close(logits(hyper_model, inputs), first, rtol=0, atol=0)
    hyper_model.set_adapter("default")  # the hypernetwork: no generated adapter applied
    torch.testing.assert_close(logits(hyper_model, inputs), base, rtol=0, atol=0)
    with hyper_model.disable_adapter():
        torch.testing.assert_close(logits(hyper_model, inputs), base, rtol=0, atol=0)
    assert not any(p.requires_grad for n, p in hyper_model.named_parameters() if ".lora_" in n)
    with pytest.raises(ValueError):
        hyper_model.set_adapter("missing")


def test_generated_adapters_do_not_affect_the_hypernetwork_forward(hyper_model, clips):
    before = hyper_model.generate_adapter(clips[2])
    hyper_model.internalize(clips[0], adapter_name="clip")
    after = hyper_model.generate_adapter(clips[2])
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)


def test_hotswap_reuses_the_injected_layers(hyper_model, clips):
    inputs = text_inputs(hyper_model)
    hyper_model.internalize(clips[0], adapter_name="slot")
    layers = {name: id(m) for name, m in hyper_model.named_modules() if isinstance(m, LoraLayer)}
    weights = {n: p.data_ptr() for n, p in hyper_model.named_parameters() if ".lora_" in n}
    hyper_model.internalize(clips[1], adapter_name="slot")
    assert {name: id(m) for name, m in hyper_model.named_modules() if isinstance(m, LoraLayer)} == layers
    assert {n: p.data_ptr() for n, p in hyper_model.named_parameters() if ".lora_" in n} == weights
    swapped = logits(hyper_model, inputs)
    hyper_model.internalize(clips[1], adapter_name="fresh")
    torch.testing.assert_close(swapped, logits(hyper_model, inputs), rtol=1e-6, atol=1e-6)
    assert hyper_model.base_model.generated_adapters == ["slot", "fresh"]


def test_mixed_adapter_batch(hyper_model, clips):
    hyper_model.eval()  # PEFT serves one adapter per sample in eval mode only
    hyper_model.internalize(clips[0], adapter_name="a")
    hyper_model.internalize(clips[1], adapter_name="b")
    single = text_inputs(hyper_model)
    batch = {k: v.repeat(2, 1) for k, v in single.items()}
    with torch.no_grad():
        mixed = hyper_model(**batch, adapter_names=["a", "b"]).logits
    hyper_model.set_adapter("a")
    torch.testing.assert_close(mixed[0], logits(hyper_model, single)[0], rtol=1e-5, atol=1e-5)
    hyper_model.set_adapter("b")
    torch.testing.assert_close(mixed[1], logits(hyper_model, single)[0], rtol=1e-5, atol=1e-5)
    generated = hyper_model.generate(**batch, adapter_names=["a", "b"], max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 2


def test_factors_applied_in_training_equal_the_peft_lora_layers(hyper_model, clips):
    tuner = hyper_model.base_model
    inputs = text_inputs(hyper_model)
    factors = tuner.generate_lora_factors(tuner.hypernetwork_inputs([load_video(clips[0], num_frames=4)]), grad=True)
    assert any(a.requires_grad for a, _ in factors.values())
    with tuner.lora_factors_applied(factors):
        functional = tuner.model(**inputs).logits
    functional.sum().backward()
    assert tuner.hypernetwork.perceiver.latents.grad is not None
    hyper_model.internalize(clips[0], adapter_name="clip")
    torch.testing.assert_close(functional.detach(), logits(hyper_model, inputs), rtol=1e-5, atol=1e-5)


def test_save_pretrained_and_auto_peft_model_round_trip(hyper_model, clips, tmp_path):
    reference = hyper_model.generate_adapter(clips[0])
    hyper_model.save_pretrained(tmp_path / "ckpt")
    files = set(os.listdir(tmp_path / "ckpt"))
    assert {"adapter_model.safetensors", "adapter_config.json", "processor_config.json", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "ckpt" / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "video-text-to-text"
    assert {"frames2lora", "video-text-to-text"} <= set(card.data.tags)
    assert "model.internalize" in card.text and "[More Information Needed]" not in card.text
    saved = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "HYPERLORA" and saved["task_type"] is None and saved["auto_mapping"]
    assert saved["base_model_architecture"]["text_num_hidden_layers"] == 3
    loaded = AutoPeftModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded.base_model, HyperLoraModel)
    assert type(loaded.processor).__name__ == "SmolVLMProcessor"
    regenerated = loaded.generate_adapter(clips[0])
    for key in reference:
        torch.testing.assert_close(regenerated[key], reference[key], rtol=0, atol=0)


def test_resident_adapters_are_saved_as_plain_lora_subfolders(hyper_model, clips, tmp_path):
    hyper_model.internalize(clips[0], adapter_name="clip")
    hyper_model.save_pretrained(tmp_path / "ckpt")
    sub = tmp_path / "ckpt" / "clip"
    assert json.loads((sub / "adapter_config.json").read_text())["peft_type"] == "LORA"
    from safetensors.torch import load_file

    assert set(load_file(sub / "adapter_model.safetensors")) == set(hyper_model.generate_adapter(clips[0]))
    root = load_file(tmp_path / "ckpt" / "adapter_model.safetensors")
    assert root and all(key.startswith("base_model.hypernetworks.") for key in root)


def test_checkpoint_for_another_base_model_is_refused(hyper_model, other_base_dir, tmp_path):
    hyper_model.save_pretrained(tmp_path / "ckpt")
    other = SmolVLMForConditionalGeneration.from_pretrained(other_base_dir)
    with pytest.raises(IncompatibleBaseModelError, match="different base model"):
        PeftModel.from_pretrained(other, tmp_path / "ckpt")


def test_adapter_for_another_base_model_is_refused(hyper_model, other_base_dir, clips):
    state_dict = hyper_model.generate_adapter(clips[0])
    other = get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(other_base_dir), small_config())
    with pytest.raises(IncompatibleBaseModelError, match="does not fit"):
        other.load_generated_adapter(state_dict, "clip")
    assert other.base_model.generated_adapters == []


def test_non_finite_adapters_are_refused_and_nothing_is_loaded(hyper_model, clips):
    with torch.no_grad():
        hyper_model.base_model.hypernetwork.context_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteAdapterError, match="NaN or infinite"):
        hyper_model.internalize(clips[0], adapter_name="clip")
    assert hyper_model.base_model.generated_adapters == []
    assert "clip" not in hyper_model.peft_config


def test_non_finite_loaded_adapter_is_refused(hyper_model, clips):
    state_dict = hyper_model.generate_adapter(clips[0])
    key = next(iter(state_dict))
    state_dict[key] = state_dict[key].clone()
    state_dict[key][0, 0] = float("inf")
    with pytest.raises(NonFiniteAdapterError, match=key.replace(".", r"\.")):
        hyper_model.load_generated_adapter(state_dict, "clip")
    assert hyper_model.base_model.generated_adapters == []


@pytest.mark.parametrize("name", ["lora_clip", "my.clip", "", "default", "hypernetworks", "a b"])
def test_adapter_names_that_peft_cannot_hold(hyper_model, clips, name):
    with pytest.raises(InvalidAdapterNameError):
        hyper_model.internalize(clips[0], adapter_name=name)


def test_bad_video_raises_before_anything_is_loaded(hyper_model, tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(b"\x00" * 2048)
    with pytest.raises(VideoDecodeError):
        hyper_model.internalize(path, adapter_name="clip")
    assert hyper_model.base_model.generated_adapters == []


def test_bias_only_adapter_is_the_input_independent_block(hyper_model, clips):
    bias = hyper_model.generate_bias_adapter()
    generated = hyper_model.generate_adapter(clips[0])
    assert set(bias) == set(generated)
    r = hyper_model.peft_config["default"].r
    for key, value in bias.items():
        if key.endswith("lora_A.weight"):
            assert not value[:r].any() and torch.equal(value[r:], generated[key][r:])
        else:
            assert not value[:, :r].any() and torch.equal(value[:, r:], generated[key][:, r:])


def test_chunked_vision_encoding_gives_the_same_adapter(vlm, clips):
    chunked = get_peft_model(vlm, small_config(frames_per_vision_chunk=3, num_frames=8))
    short = load_video(clips[1], num_frames=4)  # padded to 8 frames in the batch: padding frames are skipped
    reference = chunked.generate_adapter([clips[0], short])  # chunks of 3, 3, 2 frames
    chunked.peft_config["default"].frames_per_vision_chunk = None
    whole = chunked.generate_adapter([clips[0], short])
    for got, expected in zip(reference, whole, strict=True):
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_package_relative_base_model_paths_resolve_inside_the_installed_package():
    import peft_hyper

    config = HyperLoraConfig(base_model_name_or_path="peft_hyper://checkpoints/some/base")
    expected = os.path.join(os.path.dirname(peft_hyper.__file__), "checkpoints", "some", "base")
    assert config.base_model_name_or_path == expected
    assert HyperLoraConfig(base_model_name_or_path="org/model").base_model_name_or_path == "org/model"


def test_delete_adapter_and_several_active_adapters(hyper_model, clips):
    inputs = text_inputs(hyper_model)
    base = logits(hyper_model, inputs)
    hyper_model.internalize(clips[0], adapter_name="first")
    first = logits(hyper_model, inputs)
    hyper_model.internalize(clips[1], adapter_name="second")
    hyper_model.base_model.set_adapter(["first", "second"])  # both applied: their deltas add up
    both = logits(hyper_model, inputs)
    assert not torch.allclose(both, first)
    with hyper_model.disable_adapter():
        torch.testing.assert_close(logits(hyper_model, inputs), base, rtol=0, atol=0)
    torch.testing.assert_close(logits(hyper_model, inputs), both, rtol=0, atol=0)
    hyper_model.set_adapter("first")
    hyper_model.delete_adapter("second")
    assert hyper_model.base_model.generated_adapters == ["first"] and "second" not in hyper_model.peft_config
    torch.testing.assert_close(logits(hyper_model, inputs), first, rtol=0, atol=0)
    hyper_model.delete_adapter("first")  # the active one: back to the hypernetwork, no adapter applied
    torch.testing.assert_close(logits(hyper_model, inputs), base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="only hypernetwork"):
        hyper_model.base_model.delete_adapter("default")


def test_internalize_generation_prompt_reads_the_vlm_about_to_answer(vlm, clips, tmp_path):
    config = small_config(internalize_prompt="Describe the video.", internalize_generation_prompt=True)
    model = get_peft_model(vlm, config)
    tuner = model.base_model
    video = load_video(clips[0], num_frames=4)
    inputs = tuner.hypernetwork_inputs([video])
    text = tuner.processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.endswith("\n\nDescribe the video.<end_of_utterance>\nAssistant:")
    collated = VideoTextCollator.from_model(model)([{"video": str(clips[0]), "prompt": "p", "target": "t"}])
    assert torch.equal(collated["hyper_input_ids"], inputs["input_ids"]), "training reads what inference reads"

    answering = model.generate_adapter(clips[0])
    model.peft_config["default"].internalize_generation_prompt = False
    assert tuner.processor.tokenizer.decode(tuner.hypernetwork_inputs([video])["input_ids"][0]).endswith(
        "\n\nDescribe the video.<end_of_utterance>\n"
    )
    assert any(not torch.equal(answering[k], v) for k, v in model.generate_adapter(clips[0]).items())

    model.peft_config["default"].internalize_generation_prompt = True
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoPeftModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.peft_config["default"].internalize_generation_prompt is True
    for key, value in loaded.generate_adapter(clips[0]).items():
        torch.testing.assert_close(value, answering[key])


def test_collator_from_model_reads_videos_as_inference_does(vlm):
    """Training must read videos as inference does: every input-shaping config field reaches the collator's spec."""
    values = {"internalize_prompt": "Watch.", "internalize_generation_prompt": True, "video_size": 48, "fps": 2.0}
    model = get_peft_model(vlm, small_config(num_frames=5, **values))
    expected = HypernetworkInputSpec(num_frames=5, fps=2.0, video_size=48, prompt="Watch.", generation_prompt=True)
    assert model.base_model.input_spec == expected
    assert VideoTextCollator.from_model(model).spec == expected


def test_the_student_prompt_in_training_is_the_prompt_asked_at_inference(hyper_model, clips):
    collator = VideoTextCollator.from_model(hyper_model)
    batch = collator([{"video": clips[0], "prompt": QUESTION, "target": "red"}])
    asked = hyper_model.text_inputs(QUESTION)["input_ids"][0].tolist()
    assert batch["input_ids"][0, : len(asked)].tolist() == asked
    assert (batch["labels"][0, : len(asked)] == -100).all() and (batch["labels"][0, len(asked) :] != -100).any()


def test_answer_is_generate_on_the_one_public_prompt(hyper_model, clips):
    hyper_model.eval()
    tuner = hyper_model.base_model
    questions = [QUESTION, "What moves?"]
    inputs = hyper_model.text_inputs(questions)
    assert not (inputs["input_ids"] == tuner.processor.image_token_id).any()  # zero visual tokens
    assert inputs["attention_mask"][:, -1].all()  # left-padded for batched generation

    def greedy(generate, inputs) -> list[str]:
        with torch.no_grad():
            out = generate(**inputs, max_new_tokens=4, do_sample=False)
        return [
            t.strip()
            for t in tuner.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ]

    hyper_model.internalize(clips[0], adapter_name="a")
    hyper_model.internalize(clips[1], adapter_name="b")
    hyper_model.set_adapter("a")
    as_a = greedy(hyper_model.generate, inputs)
    assert hyper_model.answer(questions, max_new_tokens=4) == as_a
    assert hyper_model.answer(QUESTION, max_new_tokens=4) == as_a[0]  # a string for a string
    hyper_model.set_adapter("b")
    as_b = greedy(hyper_model.generate, inputs)
    assert hyper_model.answer(questions, adapter_names=["a", "b"], max_new_tokens=4) == [as_a[0], as_b[1]]

    videos = [load_video(clips[0], num_frames=4), load_video(clips[1], num_frames=4)]
    with tuner.generated_adapters_disabled():
        in_context = greedy(tuner.model.generate, hyper_model.video_inputs(videos, questions))
    assert hyper_model.answer(questions, videos=videos, max_new_tokens=4) == in_context
    assert hyper_model.active_adapters == ["b"]  # answering with videos left the active adapter as it was


def test_video_inputs_pad_left_for_batched_generation(vlm, clips):
    tuner = get_peft_model(vlm, small_config()).base_model
    videos = [load_video(clips[0], num_frames=4), load_video(clips[1], num_frames=4)]
    prompts = ["colour?", "which way does the small red square move after the circle appears?"]
    side = tuner.processor.tokenizer.padding_side
    left = tuner.video_inputs(videos, prompts, padding_side="left")["attention_mask"]
    right = tuner.video_inputs(videos, prompts, padding_side="right")["attention_mask"]
    assert left[0, 0] == 0 and left[0, -1] == 1 and left[1].all()
    assert right[0, 0] == 1 and right[0, -1] == 0
    assert tuner.processor.tokenizer.padding_side == side  # a per-call option, the tokenizer is left as it was


def test_generate_segment_adapters_returns_the_parts_generate_adapter_composes(hyper_model, clips):
    from peft_hyper.errors import InvalidSamplingError

    hyper_model.eval()
    tuner = hyper_model.base_model
    parts = tuner.generate_segment_adapters(clips[0], 4, num_frames=16, segment_batch_size=3)
    assert len(parts) == 4
    bias = tuner.hyper_config.bias_rank
    for part in parts[1:]:  # the input-independent block, the same in every segment
        for key, value in part.items():
            tail = value[-bias:] if ".lora_A." in key else value[:, -bias:]
            assert torch.equal(tail, parts[0][key][-bias:] if ".lora_A." in key else parts[0][key][:, -bias:])
    composed = tuner.generate_adapter(clips[0], num_frames=16, segment_frames=4, segment_batch_size=3)
    by_parts = tuner.compose_adapters(parts)
    assert all(torch.equal(by_parts[key], value) for key, value in composed.items())
    with pytest.raises(InvalidSamplingError, match="segment_batch_size"):
        tuner.generate_segment_adapters(clips[0], 4, segment_batch_size=0)
