"""Stage 2 of the data flow: videos and text → processor inputs. Every prompt peft-hyper shows the VLM is built here.

Three kinds of input, one user turn each, formatted by `SmolVLMProcessor.apply_chat_template`:

- the hypernetwork's input: a video, then the internalization prompt (`build_hypernetwork_inputs`, shaped by a
  `HypernetworkInputSpec`), read once per video;
- a question with the video in context (`build_video_inputs`), the baseline Frames2LoRA replaces;
- a question alone (`build_text_inputs`), what every adapter-only answer reads: zero visual tokens.

Inference (`HyperLoraModel.text_inputs` / `video_inputs` / `answer`), training (`VideoTextCollator`), teacher caching,
evaluation, the CLI and the benchmarks all call these, so a prompt a model was trained on is the prompt it is asked.

For long videos `build_chunked_hypernetwork_inputs` gives the same tokens with the pixels left for later:
`ChunkedVideoInputs.pixel_chunks` reads (decodes) and processes a chunk of frames at a time, so the float pixels of the
whole video never exist at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin

from .video import Video, VideoReader


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
    return _video_batch(processor, videos, prompt, video_size, add_generation_prompt, padding_side)


def _video_batch(
    processor: ProcessorMixin,
    videos: Sequence[Video],
    prompt: str | Sequence[str],
    video_size: int | None,
    add_generation_prompt: bool,
    padding_side: str | None,
    **video_kwargs: Any,
) -> BatchFeature:
    """`build_video_inputs`, with `video_kwargs` passed on to the video processor."""
    prompts = [prompt] * len(videos) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(videos):
        raise ValueError(f"Got {len(prompts)} prompts for {len(videos)} videos.")
    processor_kwargs: dict[str, Any] = {
        "video_metadata": [video.metadata for video in videos],
        "do_sample_frames": False,  # frames were sampled by `load_video`
        "padding": True,
        **video_kwargs,
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


def video_time_spans(videos: Sequence[Video | VideoReader]) -> torch.Tensor:
    """Each video's first and last sampled frame times in seconds, `(B, 2)` float32: what a hypernetwork with
    `time_encoding` reads besides the tokens. A segment of `split_video` keeps its times in the whole video."""
    spans = []
    for video in videos:
        times = video.metadata.timestamps
        spans.append((float(times[0]), float(times[-1])) if times else (0.0, 0.0))
    return torch.tensor(spans, dtype=torch.float32).reshape(len(spans), 2)


def build_hypernetwork_inputs(
    processor: ProcessorMixin, videos: Sequence[Video], spec: HypernetworkInputSpec, padding_side: str | None = None
) -> BatchFeature:
    """The hypernetwork's inputs: each video, then `spec.prompt` (and the assistant turn's opening iff
    `spec.generation_prompt`), frames at `spec.video_size`. Shapes as [`build_video_inputs`]."""
    return build_video_inputs(
        processor, videos, spec.prompt, spec.video_size, spec.generation_prompt, padding_side=padding_side
    )


@dataclass(frozen=True, eq=False)
class ChunkedVideoInputs(Mapping[str, torch.Tensor]):
    """The inputs of `build_video_inputs` with the pixels made on demand, a chunk of frames at a time.

    As a mapping it holds the token tensors, `input_ids` and `attention_mask` `(B, S)`, token for token those of
    `build_video_inputs` for the same videos and prompts. `pixel_values` are not built: `pixel_chunks(i, n)` reads
    video `i`'s frames `n` at a time (decoding them, for a `VideoReader`) and runs the processor's video processor on
    each chunk, so only one chunk's float pixels exist at once. `stream_decoder_layer_inputs` takes these inputs as
    it takes a processor batch.

    Attributes:
        text: `input_ids` and `attention_mask` `(B, S)`.
        videos: the `B` videos, `Video`s or `VideoReader`s.
        processor: the processor whose video processor makes the pixels.
        video_size: longest edge frames are first resized to; `None` keeps the processor's setting.
        device, dtype: where and in which floating dtype `pixel_chunks` puts the pixels.
    """

    text: dict[str, torch.Tensor]
    videos: tuple[Video | VideoReader, ...]
    processor: ProcessorMixin
    video_size: int | None = None
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.text[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.text)

    def __len__(self) -> int:
        return len(self.text)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ChunkedVideoInputs:
        """These inputs with the tokens on `device` and the pixels to come on `device` in `dtype`."""
        return replace(self, text=to_model_inputs(self.text, device, dtype), device=device, dtype=dtype)

    def pixel_chunks(self, index: int, frames_per_chunk: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The pixels of video `index`, `frames_per_chunk` frames at a time (all at once for `None`), each chunk read
        and processed when it is asked for.

        Yields:
            `pixel_values` `(1, n, 3, P, P)` in `dtype` and `pixel_attention_mask` `(1, n, P, P)`, on `device`: for
            consecutive chunks, what `build_video_inputs` gives for those frames (its batch padding aside).
        """
        video = self.videos[index]
        size = {} if self.video_size is None else {"size": {"longest_edge": self.video_size}}
        step = video.num_frames if frames_per_chunk is None else frames_per_chunk
        for start in range(0, video.num_frames, step):
            stop = min(start + step, video.num_frames)
            frames = video.frames[start:stop] if isinstance(video, Video) else video.read(start, stop).frames
            batch = self.processor.video_processor([frames], do_sample_frames=False, return_tensors="pt", **size)
            yield (
                batch["pixel_values"].to(self.device, self.dtype),
                batch["pixel_attention_mask"].to(self.device),
            )


def build_chunked_hypernetwork_inputs(
    processor: ProcessorMixin,
    videos: Sequence[Video | VideoReader],
    spec: HypernetworkInputSpec,
    padding_side: str | None = None,
) -> ChunkedVideoInputs:
    """The hypernetwork's inputs as [`build_hypernetwork_inputs`] gives them, with the pixels made chunk by chunk
    ([`ChunkedVideoInputs`]): frames of a `VideoReader` are decoded only when their chunk is processed."""
    text = _prompt_tokens(processor, videos, spec.prompt, spec.video_size, spec.generation_prompt, padding_side)
    return ChunkedVideoInputs(text=text, videos=tuple(videos), processor=processor, video_size=spec.video_size)


def _prompt_tokens(
    processor: ProcessorMixin,
    videos: Sequence[Video | VideoReader],
    prompt: str | Sequence[str],
    video_size: int | None,
    add_generation_prompt: bool,
    padding_side: str | None,
) -> dict[str, torch.Tensor]:
    """`input_ids` / `attention_mask` of `build_video_inputs` without processing the frames.

    The processor writes a video's text (`SmolVLMProcessor.replace_video_token`: the intro with the frame count and
    duration, then per frame "Frame from MM:SS" and `image_seq_len` image tokens) from the number of frames in
    `pixel_values` and the metadata alone, never from pixel values or sizes. So the processor is run, with its own
    template, tokenizer and batch padding, on 2×2 black stand-in frames, as many as each video has, with its video
    processor's resize, rescale and normalisation off: a few bytes per frame. This relies on that property of
    SmolVLM's processor; `tests/test_inputs.py` checks token for token against the real frames, and fails if a
    transformers upgrade makes the text depend on the pixels.
    """
    stand_ins = [
        Video(frames=torch.zeros((v.num_frames, 3, 2, 2), dtype=torch.uint8), metadata=v.metadata) for v in videos
    ]
    batch = _video_batch(
        processor,
        stand_ins,
        prompt,
        video_size,
        add_generation_prompt,
        padding_side,
        do_resize=False,
        do_rescale=False,
        do_normalize=False,
    )
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
