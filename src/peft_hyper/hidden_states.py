"""Stage 3 of the data flow: processor inputs (`inputs.py`) → the text decoder's per-layer input states from one
no-grad forward of the frozen VLM.

States are handed to a callback layer by layer as the forward reaches each layer, so a caller that consumes them at
once (the hypernetwork does) never holds more than one layer's states, and the forward stops after the last layer
that is needed (the lm head never runs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .inputs import ChunkedVideoInputs

_DECODER_LAYER = re.compile(r"(?:^|.*\.)text_model\.layers\.(\d+)\.(.+)$")


def split_decoder_module_name(name: str) -> tuple[int, str] | None:
    """`model.text_model.layers.3.mlp.down_proj` → `(3, "mlp.down_proj")`; None outside the text decoder layers."""
    match = _DECODER_LAYER.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None


def text_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's layer list (`...text_model.layers`) of a SmolVLM-family model."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == "text_model.layers" or name.endswith(".text_model.layers")):
            return module
    raise ValueError(
        f"{type(model).__name__} has no `text_model.layers`: peft-hyper supports SmolVLM-family models "
        "(SmolVLMForConditionalGeneration)."
    )


class _StopForward(Exception):
    """Raised inside a forward hook once the last needed layer's input has been seen."""


def encode_frames_in_chunks(
    body: nn.Module, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None, frames_per_chunk: int
) -> dict[str, BaseModelOutputWithPooling]:
    """The vision tower + connector over `pixel_values` `(B, T, 3, P, P)`, `frames_per_chunk` frames at a time, so
    that its activations stay those of one chunk however long the video. All-zero (padding) frames are skipped, as
    `get_image_features` does. Returns the `mm_encoder_outputs` the VLM body accepts instead of `pixel_values`."""

    def chunks(item: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for start in range(0, pixel_values.shape[1], frames_per_chunk):
            mask = None
            if pixel_attention_mask is not None:
                mask = pixel_attention_mask[item : item + 1, start : start + frames_per_chunk]
            yield pixel_values[item : item + 1, start : start + frames_per_chunk], mask

    return encode_frame_chunks(body, [chunks(item) for item in range(pixel_values.shape[0])])


def encode_frame_chunks(
    body: nn.Module, videos: Sequence[Iterable[tuple[torch.Tensor, torch.Tensor | None]]]
) -> dict[str, BaseModelOutputWithPooling]:
    """The vision tower + connector over each video's chunks of frames in turn, each chunk pulled from its iterable
    only when the previous one is encoded, so that only one chunk's pixels and activations exist at a time.

    Args:
        body: the VLM body (`SmolVLMModel`).
        videos: per video, its chunks in frame order: `pixel_values` `(1, n, 3, P, P)` and `pixel_attention_mask`
            `(1, n, P, P)` or `None`. All-zero (padding) frames are skipped, as `get_image_features` does.

    Returns:
        The `mm_encoder_outputs` the VLM body accepts instead of `pixel_values`: per video, `(frames × image_seq_len,
        hidden)` image features.
    """
    features = []
    for chunks_of_video in videos:
        encoded = []
        for pixels, mask in chunks_of_video:
            real = pixels.flatten(2).ne(0).any(dim=-1)[0]  # (frames,) False for padding frames
            if not real.any():
                continue
            mask = None if mask is None else mask[:, real]
            encoded.append(body.get_image_features(pixels[:, real], mask, return_dict=True).pooler_output[0])
        features.append(torch.cat(encoded, dim=0))
    return {"image": BaseModelOutputWithPooling(pooler_output=features)}


def stream_decoder_layer_inputs(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    layers: Sequence[int],
    on_layer: Callable[[int, torch.Tensor], None],
    grad_in_callback: bool = False,
    frames_per_chunk: int | None = None,
) -> None:
    """Run `model` (no grad) on `inputs` and call `on_layer(l, states)` with the states `(B, S, hidden)` entering
    decoder layer `l`, for each `l` in `layers` in order. The forward stops after the last of `layers`.

    `inputs` is a processor batch or `ChunkedVideoInputs` (pixels made chunk by chunk as the vision tower reads them).
    `grad_in_callback` runs the callback with autograd on (the states themselves never require grad).
    `frames_per_chunk` encodes the frames with the vision tower that many at a time (see `encode_frames_in_chunks`);
    `None` encodes a processor batch's frames in one batch, and each video of `ChunkedVideoInputs` in one chunk.
    """
    decoder_layers = text_decoder_layers(model)
    wanted = sorted(set(layers))
    if not wanted:
        return
    if wanted[-1] >= len(decoder_layers):
        raise ValueError(f"Layer {wanted[-1]} requested but the text decoder has {len(decoder_layers)} layers.")
    body = getattr(model, "model", model)  # skip the lm head: only decoder inputs are needed

    def make_hook(layer_idx: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            states = args[0] if args else kwargs["hidden_states"]
            with torch.set_grad_enabled(grad_in_callback):
                on_layer(layer_idx, states.detach())
            if layer_idx == wanted[-1]:
                raise _StopForward

        return hook

    handles = [decoder_layers[idx].register_forward_pre_hook(make_hook(idx), with_kwargs=True) for idx in wanted]
    try:
        with torch.no_grad():
            if isinstance(inputs, ChunkedVideoInputs):
                chunks = [inputs.pixel_chunks(item, frames_per_chunk) for item in range(len(inputs.videos))]
                inputs = {**inputs, "mm_encoder_outputs": encode_frame_chunks(body, chunks)}
            elif frames_per_chunk is not None and "pixel_values" in inputs:
                inputs = dict(inputs)
                inputs["mm_encoder_outputs"] = encode_frames_in_chunks(
                    body, inputs.pop("pixel_values"), inputs.pop("pixel_attention_mask", None), frames_per_chunk
                )
            body(**inputs, use_cache=False)
    except _StopForward:
        pass
    else:
        raise RuntimeError("The forward pass finished without reaching the hooked decoder layers.")
    finally:
        for handle in handles:
            handle.remove()
