"""Stage 2 of the data flow: videos and text → processor inputs. Every prompt peft-hyper shows the VLM is built here.

Three kinds of input, one user turn each, formatted by `SmolVLMProcessor.apply_chat_template`:

- the hypernetwork's input: a video, then the internalization prompt (`build_hypernetwork_inputs`, shaped by a
  `HypernetworkInputSpec`), read once per video;
- a question with the video in context (`build_video_inputs`), the baseline Frames2LoRA replaces;
- a question alone (`build_text_inputs`), what every adapter-only answer reads: zero visual tokens.

Inference (`HyperLoraModel.text_inputs` / `video_inputs` / `answer`), training (`VideoTextCollator`), teacher caching,
evaluation, the CLI and the benchmarks all call these, so a prompt a model was trained on is the prompt it is asked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin

from .video import Video


@dataclass(frozen=True)
class HypernetworkInputSpec:
    """What the hypernetwork reads from a video, from sampling to prompt (the `HyperLoraConfig` fields that shape it).

    Attributes:
        num_frames: frames sampled from each video (an upper bound when `fps` is set).
        fps: sample one frame every `1/fps` seconds instead of uniformly; `None` samples uniformly.
        video_size: longest edge the processor first resizes frames to; `None` keeps the processor's setting.
        prompt: the instruction after the video (`internalize_prompt`).
        generation_prompt: end with the assistant turn's opening (`internalize_generation_prompt`).
        frame_sampling: the rule `load_video` samples frames by, `"uniform"` or `"reference"` (`frame_sampling`).
    """

    num_frames: int
    fps: float | None
    video_size: int | None
    prompt: str
    generation_prompt: bool
    frame_sampling: str = "uniform"

    @classmethod
    def from_config(cls, config: Any) -> HypernetworkInputSpec:
        """The spec of a `HyperLoraConfig`."""
        return cls(
            num_frames=config.num_frames,
            fps=config.fps,
            video_size=config.video_size,
            prompt=config.internalize_prompt,
            generation_prompt=bool(config.internalize_generation_prompt),
            frame_sampling=config.frame_sampling,
        )

    def cache_key(self) -> str:
        """What identifies how a video is shown to the hypernetwork, besides the frame count (which callers key on
        separately, as they may sample other counts): a JSON string. Uniform sampling adds nothing (keys made before
        the sampling rule was an option stay valid)."""
        key = [self.prompt, self.generation_prompt, self.video_size, self.fps]
        return json.dumps(key if self.frame_sampling == "uniform" else [*key, self.frame_sampling])


MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")


def to_model_inputs(batch: Any, device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a processor `batch` that the VLM's forward takes, on `device`, floating ones cast to `dtype`."""
    inputs = {}
    for name in MODEL_INPUT_NAMES:
        if name in batch:
            value = batch[name].to(device)
            inputs[name] = value.to(dtype) if value.is_floating_point() else value
    return inputs


def user_turn(text: str, video: Video | None = None) -> list[dict[str, Any]]:
    """A one-turn conversation: the user shows `video` (if any), then says `text`."""
    content: list[dict[str, Any]] = [] if video is None else [{"type": "video", "video": video.frames}]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def text_prompt(processor: ProcessorMixin, question: str) -> str:
    """The chat-formatted text of `question` asked with no video, up to the assistant's turn (what an adapter-only
    answer continues; training appends the answer tokens to exactly this text)."""
    return processor.apply_chat_template(user_turn(question), add_generation_prompt=True, tokenize=False)


def build_text_inputs(
    processor: ProcessorMixin, questions: str | Sequence[str], padding_side: str | None = None
) -> BatchFeature:
    """Text-only inputs: one user turn per question, up to the assistant's turn; no visual token.

    Returns `input_ids`/`attention_mask` `(B, S)`; `padding_side="left"` for batched generation.
    """
    questions = [questions] if isinstance(questions, str) else list(questions)
    texts = [text_prompt(processor, question) for question in questions]
    kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
    if padding_side is not None:
        kwargs["padding_side"] = padding_side
    return processor(text=texts, **kwargs)


def build_video_inputs(
    processor: ProcessorMixin,
    videos: Sequence[Video],
    prompt: str | Sequence[str],
    video_size: int | None = None,
    add_generation_prompt: bool = False,
    padding_side: str | None = None,
) -> BatchFeature:
    """One user turn per video — the video, then its prompt (one for all, or one per video) — formatted and
    tokenised by the processor; `padding_side="left"` for batched generation (default: the tokenizer's).

    Returns `input_ids`/`attention_mask` `(B, S)` and `pixel_values` `(B, T_max, 3, H, W)`.
    """
    prompts = [prompt] * len(videos) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(videos):
        raise ValueError(f"Got {len(prompts)} prompts for {len(videos)} videos.")
    processor_kwargs: dict[str, Any] = {
        "video_metadata": [video.metadata for video in videos],
        "do_sample_frames": False,  # frames were sampled by `load_video`
        "padding": True,
    }
    if video_size is not None:
        processor_kwargs["size"] = {"longest_edge": video_size}
    if padding_side is not None:
        processor_kwargs["padding_side"] = padding_side
    return processor.apply_chat_template(
        [user_turn(text, video) for video, text in zip(videos, prompts, strict=True)],
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=processor_kwargs,
    )


def build_hypernetwork_inputs(
    processor: ProcessorMixin, videos: Sequence[Video], spec: HypernetworkInputSpec, padding_side: str | None = None
) -> BatchFeature:
    """The hypernetwork's inputs: each video, then `spec.prompt` (and the assistant turn's opening iff
    `spec.generation_prompt`), frames at `spec.video_size`. Shapes as [`build_video_inputs`]."""
    return build_video_inputs(
        processor, videos, spec.prompt, spec.video_size, spec.generation_prompt, padding_side=padding_side
    )
