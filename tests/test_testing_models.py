# Copyright 2025 The peft-hyper authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Tests of the offline SmolVLM builders in `peft_hyper.testing.models`."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import SmolVLMForConditionalGeneration, SmolVLMProcessor

from peft_hyper.testing.models import (
    SMOLVLM2_ARCHITECTURES,
    SMOLVLM_SPECIAL_TOKENS,
    build_smolvlm_processor,
    build_smolvlm_tokenizer,
    build_tiny_smolvlm,
    save_tiny_smolvlm,
    smolvlm2_config,
    smolvlm2_processor,
)
from peft_hyper.testing.videos import make_test_frames, write_video
from peft_hyper.video import load_video

NUM_FRAMES = 6
IMAGE_SEQ_LEN = 16  # (32 // 4) ** 2 // 2 ** 2


def video_conversation(video) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "video", "video": video}, {"type": "text", "text": "Describe the video."}],
        }
    ]


def process_frames(processor: SmolVLMProcessor, frames: torch.Tensor, fps: float = 1.0):
    """Process pre-decoded frames `(T, 3, H, W)` without re-sampling them."""
    metadata = load_video(frames, num_frames=frames.shape[0], source_fps=fps).metadata
    return processor.apply_chat_template(
        video_conversation(frames),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"video_metadata": [metadata], "do_sample_frames": False},
    )


@pytest.fixture(scope="module")
def tokenizer():
    return build_smolvlm_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return build_tiny_smolvlm(seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def video_inputs(tiny):
    _, processor = tiny
    return process_frames(processor, make_test_frames(NUM_FRAMES, 48, 64, seed=3))


def test_tokenizer_special_tokens(tokenizer):
    assert len(tokenizer) == 512
    for attribute, token in SMOLVLM_SPECIAL_TOKENS.items():
        assert getattr(tokenizer, attribute) == token
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.eos_token == "<end_of_utterance>"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id

    text = "Frame from 00:03:<fake_token_around_image><global-img><image><fake_token_around_image> It moves 12px left."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_tokenizer_extra_corpus_and_determinism(tokenizer):
    assert build_smolvlm_tokenizer().get_vocab() == tokenizer.get_vocab()
    extended = build_smolvlm_tokenizer(vocab_size=600, corpus=["supercalifragilistic"] * 50)
    assert len(extended) == 600
    assert len(extended.tokenize("supercalifragilistic")) < len(tokenizer.tokenize("supercalifragilistic"))


def test_chat_template(tokenizer):
    conversation = video_conversation(None)
    prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>User: <video>Describe the video.<end_of_utterance>\nAssistant:"


def test_processor_video_tokens(tiny, video_inputs):
    model, processor = tiny
    assert processor.image_seq_len == IMAGE_SEQ_LEN
    assert video_inputs["pixel_values"].shape == (1, NUM_FRAMES, 3, 32, 32)
    num_image_tokens = (video_inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert num_image_tokens == NUM_FRAMES * IMAGE_SEQ_LEN
    text = processor.decode(video_inputs["input_ids"][0])
    assert text.startswith("<|im_start|>User: You are provided the following series of six frames")
    assert "Frame from 00:05:" in text and text.endswith("Describe the video.<end_of_utterance>\nAssistant:")
    # No frame is uniformly mid-grey, so none would be dropped as padding by the model.
    assert (video_inputs["pixel_values"] != 0).flatten(2).any(-1).all()


def test_processor_resamples_without_do_sample_frames_false(tiny):
    _, processor = tiny
    frames = make_test_frames(20, 32, 32, seed=0)
    metadata = load_video(frames, num_frames=20, source_fps=2.0).metadata  # 10 s at 2 fps, sampled at 1 fps
    inputs = processor.apply_chat_template(
        video_conversation(frames),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"video_metadata": [metadata]},
    )
    assert inputs["pixel_values"].shape[1] == 10


def test_tiny_model_forward(tiny, video_inputs, tokenizer):
    model, _ = tiny
    assert not model.training and model.dtype == torch.float32
    assert model.config.text_config.vocab_size == len(tokenizer)
    with torch.no_grad():
        logits = model(**video_inputs).logits
    assert logits.shape == (*video_inputs["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(logits).all()

    same_seed, _ = build_tiny_smolvlm(seed=0, tokenizer=tokenizer)
    other_seed, _ = build_tiny_smolvlm(seed=1, tokenizer=tokenizer)
    with torch.no_grad():
        assert torch.equal(same_seed(**video_inputs).logits, logits)
        assert not torch.allclose(other_seed(**video_inputs).logits, logits)


def test_image_features_match_text_scale(tiny, video_inputs):
    model, _ = tiny
    with torch.no_grad():
        image_features = model.model.get_image_features(video_inputs["pixel_values"]).pooler_output[0]
        text_embeddings = model.get_input_embeddings().weight
    ratio = image_features.norm(dim=-1).mean() / text_embeddings.norm(dim=-1).mean()
    assert 0.1 < ratio < 10


def test_save_load_offline(tmp_path, tiny, video_inputs):
    model, processor = tiny
    save_tiny_smolvlm(tmp_path, model, processor)
    assert (tmp_path / "model.safetensors").is_file()

    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoProcessor, SmolVLMForConditionalGeneration
        from peft_hyper.testing.videos import make_test_frames
        from peft_hyper.video import load_video

        processor = AutoProcessor.from_pretrained({str(tmp_path)!r})
        model = SmolVLMForConditionalGeneration.from_pretrained({str(tmp_path)!r}).eval()
        assert type(processor).__name__ == "SmolVLMProcessor", type(processor)
        assert processor.image_seq_len == {IMAGE_SEQ_LEN}
        assert processor.video_processor.max_image_size == {{"longest_edge": 32}}
        assert processor.video_processor.num_frames == 12 and processor.video_processor.fps == 1.0
        frames = make_test_frames({NUM_FRAMES}, 48, 64, seed=3)
        metadata = load_video(frames, num_frames={NUM_FRAMES}, source_fps=1.0).metadata
        inputs = processor.apply_chat_template(
            [{{"role": "user", "content": [{{"type": "video", "video": frames}},
                                          {{"type": "text", "text": "Describe the video."}}]}}],
            add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={{"video_metadata": [metadata], "do_sample_frames": False}},
        )
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.save({{"input_ids": inputs["input_ids"], "logits": logits}}, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)

    reloaded = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        logits = model(**video_inputs).logits
    assert torch.equal(reloaded["input_ids"], video_inputs["input_ids"])
    assert torch.equal(reloaded["logits"], logits)


def test_processor_samples_an_mp4_at_its_own_fps(tmp_path, tiny):
    path = write_video(make_test_frames(24, 48, 64, seed=0), tmp_path / "clip.mp4", fps=8)
    _, processor = tiny
    inputs = processor.apply_chat_template(
        video_conversation(str(path)), tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (1, 3, 3, 32, 32)  # 1 fps over 3 s


@pytest.mark.parametrize("name", ["256M", "500M", "2.2B"])
def test_smolvlm2_parameter_counts(name, tokenizer):
    config = smolvlm2_config(name)
    assert config.image_token_id == 49190 and config.text_config.vocab_size == 49280
    with torch.device("meta"):
        model = SmolVLMForConditionalGeneration(config)
    num_parameters = sum(p.numel() for p in model.parameters())
    expected = SMOLVLM2_ARCHITECTURES[name]["num_parameters"]
    assert abs(num_parameters - expected) / expected < 0.01, num_parameters
    assert model.model.image_seq_len == SMOLVLM2_ARCHITECTURES[name]["image_seq_len"]

    local = smolvlm2_config(name, tokenizer=tokenizer)
    assert local.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert local.text_config.vocab_size == 49280


@pytest.mark.parametrize("name", ["256M", "2.2B"])
def test_smolvlm2_processor(name, tokenizer):
    arch = SMOLVLM2_ARCHITECTURES[name]
    processor = smolvlm2_processor(name, tokenizer=tokenizer)
    assert processor.image_seq_len == arch["image_seq_len"]
    assert processor.video_processor.num_frames == 64
    frames = make_test_frames(2, 64, 96, seed=0)
    inputs = process_frames(processor, frames)
    size = arch["video_longest_edge"]
    assert inputs["pixel_values"].shape == (1, 2, 3, size, size)
    assert (inputs["input_ids"] == processor.image_token_id).sum() == 2 * arch["image_seq_len"]


def test_build_smolvlm_processor_sizes(tokenizer):
    processor = build_smolvlm_processor(tokenizer, image_size=64, patch_size=8, scale_factor=2, num_frames=4, fps=2.0)
    assert processor.image_seq_len == 16
    assert processor.video_processor.num_frames == 4 and processor.video_processor.fps == 2.0
    assert processor.image_processor.do_image_splitting is False
