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
"""
Offline builders for SmolVLM(2) models, processors and tokenizers.

Everything here is built locally (no Hub access): a byte-level BPE tokenizer trained with `tokenizers` on a small
built-in corpus, a real `SmolVLMProcessor`, tiny randomly initialised `SmolVLMForConditionalGeneration` models, and the
configurations of the real SmolVLM2 checkpoints (for meta-device shape/parameter checks).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

__all__ = [
    "SMOLVLM2_ARCHITECTURES",
    "SMOLVLM_CHAT_TEMPLATE",
    "SMOLVLM_SPECIAL_TOKENS",
    "build_smolvlm_processor",
    "build_smolvlm_tokenizer",
    "build_tiny_smolvlm",
    "save_tiny_smolvlm",
    "smolvlm2_config",
    "smolvlm2_processor",
    "tiny_smolvlm_config",
]

# The SmolVLM2 chat template (the one `SmolVLMProcessor` falls back to for videos): renders `{"type": "video"}` as
# `<video>`, `{"type": "image"}` as `<image>` and `add_generation_prompt` as `Assistant:`.
SMOLVLM_CHAT_TEMPLATE: str = DEFAULT_CHAT_TEMPLATE

# Named special tokens. The attribute names are the ones `SmolVLMProcessor.__init__` reads from the tokenizer
# (`tokenizer.image_token`, `tokenizer.fake_image_token`, ...), exposed through `extra_special_tokens`.
SMOLVLM_SPECIAL_TOKENS: dict[str, str] = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
    "video_token": "<video>",
}
_UNK_TOKEN = "<|endoftext|>"
_BOS_TOKEN = "<|im_start|>"
_PAD_TOKEN = "<|im_end|>"
_EOS_TOKEN = SMOLVLM_SPECIAL_TOKENS["end_of_utterance_token"]
# `<row_i_col_j>` tokens are only used when single images are split into tiles (as in the real checkpoints).
_ROW_COL_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

_BUILTIN_CORPUS = """\
User: Describe the video in detail.<end_of_utterance>
Assistant: A red square moves from the left to the right of the frame on a dark blue background.
Assistant: A green square moves from the top to the bottom while the background stays black.
Assistant: A yellow square slides up; a purple square slides down; a white square stays still.
Assistant: The blue square moves left. The orange square moves right. The cyan circle does not move.
User: What colour is the square? Assistant: It is red. It is green. It is blue. It is yellow.
User: How many objects are there? Assistant: There is one object. There are two objects. Three. Four. Five.
User: In which direction does it move? Assistant: Left, right, up, down, towards the centre, away from it.
User: Internalize this video for later captioning.<end_of_utterance>
You are provided the following series of twelve frames from a 0:00:12 [H:MM:SS] video.
You are provided the following series of one frames from a 0:00:01 [H:MM:SS] video.
Frame from 00:00: Frame from 00:01: Frame from 00:02: Frame from 00:03: Frame from 00:04: Frame from 00:05:
Frame from 00:06: Frame from 00:07: Frame from 00:08: Frame from 00:09: Frame from 00:10: Frame from 00:11:
Frame from 01:23: Frame from 12:34: Frame from 45:56: Frame from 59:07:
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand
0 1 2 3 4 5 6 7 8 9 10 11 12 16 24 30 32 48 60 64 81 100 256 384 512 1000 2025 3.14 0.5 1/2 1:30 12:00
A person walks into the kitchen, opens the fridge, takes out a bottle of milk and pours it into a glass.
Then they sit down at the table and read a newspaper while the sun shines through the window.
The camera pans slowly across a green field; a dog runs after a ball and brings it back to its owner.
Two children are playing football in the park. One of them scores a goal and the other one laughs.
The man in the red jacket is cooking pasta. He adds salt to the water, stirs the sauce and tastes it.
A woman rides a bicycle down a quiet street, stops at a traffic light and waves at a friend.
The quick brown fox jumps over the lazy dog. How vexingly quick daft zebras jump!
What happens at the beginning of the video? What happens at the end? What is the person holding?
Why does the car stop? Where is the cat sitting? When does the music start? Who enters the room first?
The video shows a cooking tutorial, a sports highlight, a nature documentary and a street interview.
First, second, third, then, next, finally, before, after, while, during, at the same time, later.
Yes. No. Maybe. I don't know. The answer is (A). The answer is (B). The answer is (C). The answer is (D).
"""


def build_smolvlm_tokenizer(vocab_size: int = 512, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """
    Train a small byte-level BPE tokenizer with the SmolVLM special tokens and chat template.

    Digits are split individually (as in SmolLM2), so timestamps such as `00:03` always encode. Any byte sequence
    is encodable (byte-level alphabet). Training is deterministic for a given corpus.

    Args:
        vocab_size (`int`, *optional*, defaults to 512):
            Target vocabulary size, special tokens and the 256-symbol byte alphabet included.
        corpus (`Iterable[str]`, *optional*):
            Extra text to train on, in addition to the built-in English corpus.

    Returns:
        `PreTrainedTokenizerFast` with `bos_token="<|im_start|>"`, `eos_token="<end_of_utterance>"`,
        `pad_token="<|im_end|>"`, `unk_token="<|endoftext|>"` and the attributes `image_token`, `fake_image_token`,
        `global_image_token`, `end_of_utterance_token` and `video_token`.
    """
    special_tokens = [
        _UNK_TOKEN,
        _BOS_TOKEN,
        _PAD_TOKEN,
        *dict.fromkeys(SMOLVLM_SPECIAL_TOKENS.values()),
        *_ROW_COL_TOKENS,
    ]
    min_size = len(pre_tokenizers.ByteLevel.alphabet()) + len(special_tokens)
    if vocab_size < min_size:
        raise ValueError(
            f"`vocab_size` must be at least {min_size} (byte alphabet + special tokens), got {vocab_size}."
        )

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = _BUILTIN_CORPUS.splitlines()
    if corpus is not None:
        texts = texts + list(corpus)
    backend.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_BOS_TOKEN,
        eos_token=_EOS_TOKEN,
        pad_token=_PAD_TOKEN,
        unk_token=_UNK_TOKEN,
        extra_special_tokens=dict(SMOLVLM_SPECIAL_TOKENS),
        model_max_length=8192,
        padding_side="left",
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    return tokenizer


def build_smolvlm_processor(
    tokenizer: PreTrainedTokenizerFast | None = None,
    image_size: int = 32,
    patch_size: int = 4,
    scale_factor: int = 2,
    num_frames: int = 12,
    fps: float = 1.0,
    do_image_splitting: bool = False,
) -> SmolVLMProcessor:
    """
    Build a `SmolVLMProcessor` whose video frames each become exactly one `image_size x image_size` image.

    Each frame is expanded to `<fake_token_around_image><global-img>` + `image_seq_len` x `<image>` +
    `<fake_token_around_image>` with `image_seq_len = (image_size // patch_size) ** 2 // scale_factor ** 2`;
    `pixel_values` come out as `(batch, num_frames, 3, image_size, image_size)`.

    Args:
        tokenizer (`PreTrainedTokenizerFast`, *optional*):
            Defaults to `build_smolvlm_tokenizer()`.
        image_size (`int`): Side of the square frames fed to the vision tower (= `vision_config.image_size`).
        patch_size (`int`): Vision patch size (only used to compute `image_seq_len`).
        scale_factor (`int`): Pixel-shuffle factor of the connector (only used to compute `image_seq_len`).
        num_frames (`int`): Maximum number of frames sampled from a video.
        fps (`float`): Frames per second sampled from a video.
        do_image_splitting (`bool`, *optional*, defaults to `False`):
            Whether *single images* are tiled (as in the real checkpoints, with `size = 4 * image_size`). Videos are
            never split.
    """
    if tokenizer is None:
        tokenizer = build_smolvlm_tokenizer()
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=do_image_splitting,
        size={"longest_edge": 4 * image_size if do_image_splitting else image_size},
        max_image_size={"longest_edge": image_size},
    )
    video_processor = SmolVLMVideoProcessor(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        num_frames=num_frames,
        fps=fps,
    )
    return SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_len=image_seq_len,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of the `<image>`, bos, eos and pad tokens of `tokenizer`."""
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_smolvlm_config(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int = 32,
    patch_size: int = 4,
    scale_factor: int = 2,
    text_hidden: int = 64,
    text_layers: int = 3,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    vision_intermediate: int | None = None,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
) -> SmolVLMConfig:
    """
    Configuration of a tiny SmolVLM consistent with `tokenizer` (vocabulary size, `<image>`, bos/eos/pad ids).

    The vision tower sees `image_size x image_size` frames cut into `(image_size // patch_size) ** 2` patches; the
    connector pixel-shuffles them into `image_seq_len = (image_size // patch_size) ** 2 // scale_factor ** 2`
    text-sized features per frame. `vision_intermediate` defaults to `4 * vision_hidden`.
    """
    if (image_size // patch_size) % scale_factor != 0:
        raise ValueError(
            f"`image_size // patch_size` ({image_size // patch_size}) must be divisible by `scale_factor`."
        )
    ids = _token_ids(tokenizer)
    text_config = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": text_hidden,
        "num_hidden_layers": text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10_000.0,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    vision_config = {
        "hidden_size": vision_hidden,
        "intermediate_size": vision_intermediate if vision_intermediate is not None else 4 * vision_hidden,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": vision_heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    return SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=scale_factor,
        image_token_id=ids["image_token_id"],
        pad_token_id=ids["pad_token_id"],
        tie_word_embeddings=tie_word_embeddings,
    )


def build_tiny_smolvlm(
    seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None, num_frames: int = 12, **config_kwargs: Any
) -> tuple[SmolVLMForConditionalGeneration, SmolVLMProcessor]:
    """
    Build a tiny fp32 SmolVLM (eval mode) and its matching processor; deterministic for a given `seed`.

    The connector projection (`model.model.connector.modality_projection.proj`) is scaled by 0.1 at init so that
    image features have the norm of text embeddings (with the default init they are ~100x larger and a model trained
    from scratch ignores the video).

    Args:
        seed (`int`): Seed of the weight initialisation.
        tokenizer (`PreTrainedTokenizerFast`, *optional*): Defaults to `build_smolvlm_tokenizer()`.
        num_frames (`int`): Maximum number of frames the processor samples from a video.
        config_kwargs: Forwarded to `tiny_smolvlm_config` (`image_size`, `patch_size`, `text_hidden`, ...).
    """
    if tokenizer is None:
        tokenizer = build_smolvlm_tokenizer()
    config = tiny_smolvlm_config(tokenizer, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmolVLMForConditionalGeneration(config)
    with torch.no_grad():
        model.model.connector.modality_projection.proj.weight.mul_(0.1)
    model = model.to(torch.float32).eval()
    processor = build_smolvlm_processor(
        tokenizer,
        image_size=config.vision_config.image_size,
        patch_size=config.vision_config.patch_size,
        scale_factor=config.scale_factor,
        num_frames=num_frames,
    )
    return model, processor


def save_tiny_smolvlm(
    save_directory: str | Path,
    model: SmolVLMForConditionalGeneration | None = None,
    processor: SmolVLMProcessor | None = None,
    seed: int = 0,
) -> Path:
    """
    Save a tiny SmolVLM (safetensors) and its processor to `save_directory`.

    If `model`/`processor` are not given, `build_tiny_smolvlm(seed)` is saved. The directory loads offline with
    `SmolVLMForConditionalGeneration.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)` (the processor
    keeps its `image_seq_len`, frame size, `num_frames` and `fps`).
    """
    if (model is None) != (processor is None):
        raise ValueError("Pass both `model` and `processor`, or neither.")
    if model is None:
        model, processor = build_tiny_smolvlm(seed)
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_directory, safe_serialization=True)
    processor.save_pretrained(save_directory)
    return save_directory


# Real SmolVLM2 architectures, from the models' published `config.json`s (text hidden/layers/heads/kv heads,
# intermediate, vision hidden/layers/patch/image size, scale_factor, vocab 49280, image_token_id 49190, max positions
# 8192, rope_theta 1e5 for 256M/500M, rms_norm_eps 1e-5). The vision towers are SigLIP checkpoints:
# `google/siglip-base-patch16-512` for 256M/500M (intermediate 3072, 12 heads) and `google/siglip-so400m-patch14-384`
# for 2.2B (intermediate 4304, 16 heads); the SmolVLM vision-config defaults in transformers (hidden 1152, 16 heads,
# `gelu_pytorch_tanh`, layer-norm eps 1e-6) are the so400m values. The text decoders are SmolLM2-135M / 360M / 1.7B
# (head_dim = hidden / heads = 64 for all three) with untied embeddings in the VLMs: the untied parameter counts
# match the notes' 256.5M / 507.5M / 2246.8M to <0.01%, the tied ones miss by 4-11%.
# The 2.2B `rope_theta` (273768) is the SmolVLM(1)-Instruct value, not verified for SmolVLM2; it does not change shapes.
SMOLVLM2_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "256M": {
        "text_hidden": 576,
        "text_layers": 30,
        "heads": 9,
        "kv_heads": 3,
        "intermediate": 1536,
        "rope_theta": 100_000.0,
        "vision_hidden": 768,
        "vision_layers": 12,
        "vision_heads": 12,
        "vision_intermediate": 3072,
        "patch_size": 16,
        "image_size": 512,
        "scale_factor": 4,
        "image_seq_len": 64,
        "video_longest_edge": 512,
        "num_parameters": 256.5e6,
    },
    "500M": {
        "text_hidden": 960,
        "text_layers": 32,
        "heads": 15,
        "kv_heads": 5,
        "intermediate": 2560,
        "rope_theta": 100_000.0,
        "vision_hidden": 768,
        "vision_layers": 12,
        "vision_heads": 12,
        "vision_intermediate": 3072,
        "patch_size": 16,
        "image_size": 512,
        "scale_factor": 4,
        "image_seq_len": 64,
        "video_longest_edge": 512,
        "num_parameters": 507.5e6,
    },
    "2.2B": {
        "text_hidden": 2048,
        "text_layers": 24,
        "heads": 32,
        "kv_heads": 32,
        "intermediate": 8192,
        "rope_theta": 273_768.0,
        "vision_hidden": 1152,
        "vision_layers": 27,
        "vision_heads": 16,
        "vision_intermediate": 4304,
        "patch_size": 14,
        "image_size": 384,
        "scale_factor": 3,
        "image_seq_len": 81,
        "video_longest_edge": 384,
        "num_parameters": 2246.8e6,
    },
}
SMOLVLM2_VOCAB_SIZE = 49280
SMOLVLM2_IMAGE_TOKEN_ID = 49190
SMOLVLM2_MAX_POSITION_EMBEDDINGS = 8192
# SmolLM2 tokenizer ids: <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2.
_SMOLVLM2_TOKEN_IDS = {
    "image_token_id": SMOLVLM2_IMAGE_TOKEN_ID,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def smolvlm2_config(
    name: Literal["256M", "500M", "2.2B"], tokenizer: PreTrainedTokenizerFast | None = None
) -> SmolVLMConfig:
    """
    Configuration of the real SmolVLM2-256M-Video / 500M-Video / 2.2B checkpoints (see `SMOLVLM2_ARCHITECTURES`).

    With `tokenizer` (e.g. a local `build_smolvlm_tokenizer()`), `image_token_id` and the bos/eos/pad ids are taken
    from it, so that a randomly initialised model of the real size runs with the local processor; the vocabulary
    stays padded to 49280 (`len(tokenizer)` must not exceed it).
    """
    if name not in SMOLVLM2_ARCHITECTURES:
        raise ValueError(f"Unknown SmolVLM2 size {name!r}; expected one of {sorted(SMOLVLM2_ARCHITECTURES)}.")
    arch = SMOLVLM2_ARCHITECTURES[name]
    ids = dict(_SMOLVLM2_TOKEN_IDS)
    if tokenizer is not None:
        if len(tokenizer) > SMOLVLM2_VOCAB_SIZE:
            raise ValueError(
                f"Tokenizer has {len(tokenizer)} tokens, more than the {SMOLVLM2_VOCAB_SIZE} of SmolVLM2."
            )
        ids = _token_ids(tokenizer)
    text_config = {
        "model_type": "llama",
        "vocab_size": SMOLVLM2_VOCAB_SIZE,
        "hidden_size": arch["text_hidden"],
        "num_hidden_layers": arch["text_layers"],
        "num_attention_heads": arch["heads"],
        "num_key_value_heads": arch["kv_heads"],
        "head_dim": arch["text_hidden"] // arch["heads"],
        "intermediate_size": arch["intermediate"],
        "max_position_embeddings": SMOLVLM2_MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-5,
        "rope_theta": arch["rope_theta"],
        "tie_word_embeddings": False,
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    vision_config = {
        "hidden_size": arch["vision_hidden"],
        "intermediate_size": arch["vision_intermediate"],
        "num_hidden_layers": arch["vision_layers"],
        "num_attention_heads": arch["vision_heads"],
        "image_size": arch["image_size"],
        "patch_size": arch["patch_size"],
    }
    return SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=arch["scale_factor"],
        image_token_id=ids["image_token_id"],
        pad_token_id=ids["pad_token_id"],
        tie_word_embeddings=False,
    )


def smolvlm2_processor(
    name: Literal["256M", "500M", "2.2B"],
    tokenizer: PreTrainedTokenizerFast | None = None,
    num_frames: int = 64,
    fps: float = 1.0,
) -> SmolVLMProcessor:
    """
    A `SmolVLMProcessor` with the image size, `image_seq_len` (64 at 512px, 81 at 384px) and video sampling of a
    real SmolVLM2 checkpoint (Hub defaults: `fps=1`, at most 64 frames), on a local tokenizer.

    Token ids of the local tokenizer differ from the real ones: build the model with
    `smolvlm2_config(name, tokenizer=processor.tokenizer)` to run it with this processor.
    """
    arch = SMOLVLM2_ARCHITECTURES[name]
    return build_smolvlm_processor(
        tokenizer,
        image_size=arch["image_size"],
        patch_size=arch["patch_size"],
        scale_factor=arch["scale_factor"],
        num_frames=num_frames,
        fps=fps,
        do_image_splitting=True,
    )
