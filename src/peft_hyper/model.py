"""`HyperLoraModel`: Frames2LoRA as a PEFT tuner.

The tuner holds one hypernetwork per hypernetwork adapter (`self.hypernetworks[name]`, saved by PEFT like any adapter
weights) and turns videos into PEFT LoRA adapters for its own base model, which `GeneratedAdapters`
(`generated_adapters.py`) keeps resident: LoRA math, activation and mixed-adapter batches are PEFT's.

Data flow (one module per stage): video → frames (`video.py`) → processor inputs (`inputs.py`) → per-layer decoder
states (`hidden_states.py`) → perceiver latents → LoRA factors (`perceiver.py`, `hypernetwork.py`) → PEFT LoRA state
dict (`lora.py`) → resident in the base model (`generated_adapters.py`) → answers to text-only questions (`answer`).
Long videos: segments (`split_video`) → one adapter each → composed in rank space (`composition.py`), and questions
routed to the segment they name (`routing.py`, `route`).

Threads: one model may be shared by several threads. Every call that reads or changes the model's shared state (the
layer hooks of a hypernetwork forward, the resident adapters and which are active, a generation) holds the model's
lock, so concurrent calls are correct and run one after another.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .composition import Composition, compose_adapters
from .config import HyperLoraConfig
from .errors import (
    IncompatibleBaseModelError,
    IncompleteCheckpointError,
    InvalidAdapterNameError,
    InvalidFramesError,
    InvalidSamplingError,
    MissingProcessorError,
    UsageError,
)
from .generated_adapters import GeneratedAdapters, check_lora_state_dict, write_lora_directory
from .hidden_states import split_decoder_module_name, stream_decoder_layer_inputs
from .hypernetwork import HyperNetwork, LoraTarget
from .inputs import (
    ChunkedVideoInputs,
    HypernetworkInputSpec,
    build_chunked_hypernetwork_inputs,
    build_hypernetwork_inputs,
    build_text_inputs,
    build_video_inputs,
    to_model_inputs,
    video_time_spans,
)
from .lora import build_lora_config, check_finite, factors_to_state_dicts, lora_state_dict_keys
from .reference_hypernetwork import ReferenceHyperNetwork
from .routing import SegmentedVideo, SegmentRouter, choose_segments
from .saving import atomic_directory
from .video import Video, VideoInput, VideoReader, load_video, open_video, split_video

LoraFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]
# Frames per second segments are sampled at when no `num_frames` is given (see `_segment_sampling`).
DEFAULT_SEGMENT_FPS = 1.0
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_RESERVED_SUBSTRINGS = ("lora_", "hypernetworks", "base_layer")
_Method = TypeVar("_Method", bound=Callable[..., Any])
# `HyperLoraConfig.architecture` → the hypernetwork class; both have the interface the tuner uses (`targets`, `layers`,
# `generate_for_layer`, `bias_factors`).
HYPERNETWORK_CLASSES: dict[str, type[nn.Module]] = {"peft-hyper": HyperNetwork, "frames2lora": ReferenceHyperNetwork}


def _serialized(method: _Method) -> _Method:
    """Run `method` holding the model's lock (see the module docstring)."""

    @functools.wraps(method)
    def locked(self: HyperLoraModel, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


def target_selected(target_modules: str | Sequence[str], name: str) -> bool:
    """PEFT's matching rule: a string is a regex that must match the full module name; a list holds module names or
    `.`-suffixes of them."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in target_modules)


def find_lora_targets(model: nn.Module, target_modules: str | Sequence[str]) -> list[LoraTarget]:
    """The text-decoder linear layers of `model` selected by `target_modules` (PEFT matching rules: a string is a
    full-match regex, a list holds names or `.`-suffixes). Raises if a selected module is outside the decoder layers."""
    targets, outside = [], []
    for name, module in model.named_modules():
        if ".base_layer" in name or ".lora_" in name:
            continue  # inside a PEFT layer
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if not isinstance(base, nn.Linear) or not target_selected(target_modules, name):
            continue
        location = split_decoder_module_name(name)
        if location is None:
            outside.append(name)
            continue
        targets.append(LoraTarget(name, location[0], location[1], base.in_features, base.out_features))
    if outside:
        raise ValueError(
            f"target_modules {target_modules!r} selects modules outside the text decoder layers, e.g. {outside[:3]}. "
            "Generated adapters can only target `text_model.layers.<i>.*` linear layers; use a regex such as "
            r"'.*text_model\.layers\.\d+\.mlp\.down_proj'."
        )
    if not targets:
        raise ValueError(
            f"target_modules {target_modules!r} matches no linear layer of the text decoder of "
            f"{type(model).__name__}. Check the module names with `model.named_modules()`."
        )
    return targets


def describe_base_model(model: nn.Module, targets: Sequence[LoraTarget]) -> dict[str, Any]:
    """A JSON-serialisable fingerprint of the base model parts a hypernetwork depends on."""
    text_config = model.config.get_text_config()
    kinds: dict[str, dict[str, Any]] = {}
    for target in targets:
        entry = kinds.setdefault(target.kind, {"in": target.in_features, "out": target.out_features, "layers": []})
        entry["layers"].append(target.layer_idx)
    return {
        "model_type": model.config.model_type,
        "text_hidden_size": text_config.hidden_size,
        "text_num_hidden_layers": text_config.num_hidden_layers,
        "vocab_size": text_config.vocab_size,
        "targets": {kind: {**entry, "layers": sorted(entry["layers"])} for kind, entry in sorted(kinds.items())},
    }


class HyperLoraModel(BaseTuner):
    """
    Creates a Frames2LoRA model from a SmolVLM-family model: a hypernetwork that turns a video into a LoRA adapter for
    the frozen base model in one forward pass.

    Args:
        model ([`~transformers.PreTrainedModel`]): the (frozen) video-language model, e.g.
            `SmolVLMForConditionalGeneration`.
        config ([`HyperLoraConfig`]): the hypernetwork configuration.
        adapter_name (`str`): the name of the hypernetwork adapter, `"default"` by default.

    Example:
        ```py
        >>> import peft_hyper
        >>> from peft import get_peft_model
        >>> model = get_peft_model(vlm, peft_hyper.HyperLoraConfig())
        >>> model.internalize("clip.mp4", adapter_name="clip")  # generate, load and activate
        >>> model.answer("What happens in the video?")  # asked with zero visual tokens in context
        ```
    """

    prefix: str = "hypernetworks"
    tuner_layer_cls = LoraLayer
    target_module_mapping: dict[str, list[str]] = {}

    # Defaults that exist before `nn.Module.__init__` runs (BaseTuner calls `inject_adapter` from its __init__).
    _processor: Any = None
    active_hypernetwork: str | None = None

    def __init__(
        self,
        model: nn.Module,
        config: HyperLoraConfig | dict[str, HyperLoraConfig],
        adapter_name: str = "default",
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        self.model.requires_grad_(False)
        self.adapters = GeneratedAdapters(self.model, self.peft_config)
        self._segmented: dict[str, SegmentedVideo] = {}  # adapters internalized by segments for `route`
        if self._processor is None:
            self._processor = self._find_processor(local_only=True)
            self._attach_processor_to_configs()

    # ------------------------------------------------------------------ PEFT tuner interface
    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Create the hypernetwork `adapter_name` for `model` (nothing is injected into the base model yet)."""
        config = self.peft_config[adapter_name]
        if not isinstance(config, HyperLoraConfig):
            raise TypeError(f"HyperLoraModel adapters need a HyperLoraConfig, got {type(config).__name__}.")
        self._check_adapter_name(adapter_name, allow_existing=True)
        targets = find_lora_targets(model, config.target_modules)
        architecture = describe_base_model(model, targets)
        if config.base_model_architecture is None:
            config.base_model_architecture = architecture
        elif config.base_model_architecture != architecture:
            raise IncompatibleBaseModelError(_architecture_mismatch(config.base_model_architecture, architecture))
        text_config = model.config.get_text_config()
        device = next(model.parameters()).device  # a meta-device base model (shape checks) gets a meta hypernetwork
        with torch.device("meta") if device.type == "meta" else nullcontext():
            hypernetwork = HYPERNETWORK_CLASSES[config.architecture](
                config, text_config.hidden_size, text_config.num_hidden_layers, targets
            )
            if config.router_layer is not None:
                if config.router_layer >= text_config.num_hidden_layers:
                    raise ValueError(
                        f"HyperLoraConfig.router_layer is {config.router_layer} but the text decoder has "
                        f"{text_config.num_hidden_layers} layers."
                    )
                # The router reads the base model, not the hypernetwork's inputs; it lives in the hypernetwork's
                # module so that PEFT saves and loads it with the hypernetwork's weights.
                hypernetwork.router = SegmentRouter(text_config.hidden_size, config.router_dim)
        if device.type != "meta":
            hypernetwork.to(device)
        if "hypernetworks" not in self._modules:
            self.hypernetworks = nn.ModuleDict()
        self.hypernetworks[adapter_name] = hypernetwork
        # every hypernetwork's targets (BaseTuner keeps the list for PEFT's checks); a second one must not hide the first's
        self.targeted_module_names = list(dict.fromkeys([*self.targeted_module_names, *(t.name for t in targets)]))
        if self.active_hypernetwork is None:
            self.active_hypernetwork = adapter_name

    @staticmethod
    def _check_target_module_exists(peft_config: HyperLoraConfig, key: str) -> bool:
        # the rule `find_lora_targets` applies: selected by `target_modules` and inside the text decoder layers
        return target_selected(peft_config.target_modules, key) and split_decoder_module_name(key) is not None

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("HyperLoraModel injects no layers of its own; generated adapters are PEFT LoRA.")

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        model.requires_grad_(False)  # the VLM and every generated LoRA adapter stay frozen

    def _check_new_adapter_config(self, config: HyperLoraConfig) -> None:
        if not isinstance(config, HyperLoraConfig):
            raise TypeError("A HyperLoraModel only takes HyperLoraConfig adapters.")

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        return  # hypernetworks are created in float32 and stay there

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for name in names:
            if name in self.hypernetworks:
                self.hypernetworks[name].requires_grad_(requires_grad)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """Only the hypernetwork's weights are saved; generated LoRA adapters are saved with `save_adapter`."""
        marker = f"hypernetworks.{adapter_name}."
        return {key: value for key, value in state_dict.items() if marker in key}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return key.replace(f"hypernetworks.{adapter_name}.", "hypernetworks.", 1)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = {
            key.replace("hypernetworks.", f"hypernetworks.{adapter_name}.", 1): v for key, v in state_dict.items()
        }
        if isinstance(config, HyperLoraConfig):
            # PEFT only warns about missing keys; a hypernetwork missing some weights would run half-random.
            marker = f"hypernetworks.{adapter_name}."
            expected = {name for name, _ in model.named_parameters() if marker in name}
            missing = sorted(expected - set(remapped))
            if missing:
                raise IncompleteCheckpointError(
                    f"The hypernetwork checkpoint lacks {len(missing)} of its {len(expected)} weights (e.g. "
                    f"{missing[0].split(marker, 1)[1]}): it is truncated, or was saved by another version or "
                    "configuration. Re-save or re-download the complete checkpoint."
                )
        return remapped

    # ------------------------------------------------------------------ adapters: activation and bookkeeping
    @property
    def hypernetwork(self) -> HyperNetwork | ReferenceHyperNetwork:
        """The active hypernetwork."""
        return self.hypernetworks[self.active_hypernetwork]

    @property
    def hyper_config(self) -> HyperLoraConfig:
        """The config of the active hypernetwork."""
        return self.peft_config[self.active_hypernetwork]

    @property
    def lora_config(self) -> LoraConfig:
        """The `peft.LoraConfig` that the adapters of the active hypernetwork belong to: the exact names of the modules
        the hypernetwork targets (never a regex, which could select more modules on another base) and a zero
        initialisation, so that stock PEFT leaves any module the adapter file lacks unchanged."""
        return self._lora_config(self.hyper_config.total_rank)

    def _lora_config(self, rank: int) -> LoraConfig:
        """The `LoraConfig` of an adapter of rank `rank` (generated: the total rank; composed: any) for the active
        hypernetwork's targets."""
        targets = sorted(t.name for t in self.hypernetwork.targets)
        return build_lora_config(rank, targets, self.hyper_config.base_model_name_or_path)

    @property
    def generated_adapters(self) -> list[str]:
        """Names of the generated LoRA adapters resident in the model."""
        return self.adapters.names

    @_serialized
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate a hypernetwork (then no generated adapter is applied) or one or more generated adapters."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) == 1 and names[0] in self.hypernetworks:
            self.active_hypernetwork = names[0]
            self.active_adapter = names[0]
            self.adapters.set_enabled(False)
            return
        missing = [name for name in names if name not in self.adapters]
        if missing:
            raise ValueError(
                f"Unknown adapter(s) {missing}. Hypernetworks: {list(self.hypernetworks)}; generated adapters: "
                f"{self.generated_adapters}. Create one with `model.internalize(video, adapter_name=...)`."
            )
        self.adapters.activate(names)
        self.active_adapter = adapter_name

    @_serialized
    def delete_adapter(self, adapter_name: str) -> None:
        """Remove a generated adapter (or a hypernetwork that is not the only one)."""
        if adapter_name in self.hypernetworks:
            if len(self.hypernetworks) == 1:
                raise ValueError("Cannot delete the only hypernetwork of a HyperLoraModel.")
            del self.hypernetworks[adapter_name]
            del self.peft_config[adapter_name]
            if self.active_hypernetwork == adapter_name:
                self.set_adapter(next(iter(self.hypernetworks)))
            return
        if adapter_name not in self.adapters:
            raise ValueError(f"No adapter named '{adapter_name}'.")
        segmented = self._segmented.pop(adapter_name, None)
        for name in (adapter_name, *(segmented.names if segmented else ())):
            self.adapters.delete(name)
            del self.peft_config[name]
        if adapter_name in self._as_list(self.active_adapter):
            self.set_adapter(self.active_hypernetwork)

    @_serialized
    def enable_adapter_layers(self) -> None:
        if self._as_list(self.active_adapter) != [self.active_hypernetwork]:  # generated adapter(s) are active
            self.adapters.set_enabled(True)

    @_serialized
    def disable_adapter_layers(self) -> None:
        self.adapters.set_enabled(False)

    @_serialized
    def merge_adapter(self, adapter_names: list[str] | None = None) -> None:
        """Merge the active (or the given) generated adapters into the base weights (PEFT's merge)."""
        self.adapters.merge(adapter_names)

    @_serialized
    def unmerge_adapter(self) -> None:
        """Undo `merge_adapter`."""
        self.adapters.unmerge()

    @staticmethod
    def _as_list(names: str | list[str]) -> list[str]:
        return [names] if isinstance(names, str) else list(names)

    @contextmanager
    def generated_adapters_disabled(self) -> Iterator[None]:
        """Within the context the base model runs without any generated adapter (a no-op when none is resident)."""
        with self._lock, self.adapters.switched(False):
            yield

    def _check_adapter_name(self, adapter_name: str, allow_existing: bool = False) -> None:
        if not isinstance(adapter_name, str) or not _ADAPTER_NAME.fullmatch(adapter_name):
            raise InvalidAdapterNameError(
                f"Invalid adapter name {adapter_name!r}: use letters, digits, '_' and '-' only, starting with a letter "
                "or digit (PEFT puts adapter names inside parameter names, so '.' is not allowed)."
            )
        clash = [s for s in _RESERVED_SUBSTRINGS if s in adapter_name]
        if clash:
            raise InvalidAdapterNameError(
                f"Adapter name {adapter_name!r} contains {clash[0]!r}, which PEFT uses to find adapter weights in "
                "parameter names; choose another name."
            )
        if not allow_existing and adapter_name in self.hypernetworks:
            raise InvalidAdapterNameError(
                f"'{adapter_name}' is the name of a hypernetwork; give the generated adapter another name."
            )

    # ------------------------------------------------------------------ processor
    @property
    def processor(self):
        """The processor that formats videos and prompts for the base model (a `SmolVLMProcessor`)."""
        if self._processor is None:
            self._processor = self._find_processor(local_only=False)
            self._attach_processor_to_configs()
        if self._processor is None:
            raise MissingProcessorError(
                "No processor is attached and none was found next to the checkpoint or at the base model path "
                f"({self.hyper_config.base_model_name_or_path!r}). Attach one with "
                "`model.set_processor(AutoProcessor.from_pretrained(<base model>))`."
            )
        return self._processor

    def set_processor(self, processor: Any) -> None:
        """Attach the processor used for videos and prompts; `save_pretrained` saves it beside the hypernetwork."""
        self._processor = processor
        self._attach_processor_to_configs()

    def _attach_processor_to_configs(self) -> None:
        for config in self.peft_config.values():
            if isinstance(config, HyperLoraConfig):
                config._processor = self._processor

    def _find_processor(self, local_only: bool) -> Any:
        from transformers import AutoProcessor

        config = self.peft_config[self.active_hypernetwork]
        for source in (config._source_path, config.base_model_name_or_path):
            if not source:
                continue
            if os.path.isdir(source):
                if not any(
                    os.path.isfile(os.path.join(source, f))
                    for f in ("processor_config.json", "preprocessor_config.json")
                ):
                    continue
            elif local_only:
                continue
            try:
                return AutoProcessor.from_pretrained(source)
            except (OSError, ValueError):
                continue
        return None

    # ------------------------------------------------------------------ inputs and answers
    @property
    def input_spec(self) -> HypernetworkInputSpec:
        """How the active hypernetwork reads a video (frames, fps, size, prompt, generation prompt)."""
        return HypernetworkInputSpec.from_config(self.hyper_config)

    def load_videos(
        self, video: VideoInput | Sequence[VideoInput], num_frames: int | None = None, fps: float | None = None
    ) -> tuple[list[Video], bool]:
        """Decode and sample one video or a list of them as the active hypernetwork reads videos (`num_frames` /
        `fps` override its spec). Returns the videos and whether the input was a list."""
        return self._sampled_videos(load_video, video, num_frames, fps)

    def open_videos(
        self, video: VideoInput | Sequence[VideoInput], num_frames: int | None = None, fps: float | None = None
    ) -> tuple[list[VideoReader], bool]:
        """`load_videos` without decoding: `VideoReader`s whose frames are decoded when read. Returns the readers and
        whether the input was a list."""
        return self._sampled_videos(open_video, video, num_frames, fps)

    def _sampled_videos(
        self,
        sample: Callable[..., Any],
        video: VideoInput | Sequence[VideoInput],
        num_frames: int | None,
        fps: float | None,
    ) -> tuple[list[Any], bool]:
        spec = self.input_spec
        num_frames = spec.num_frames if num_frames is None else num_frames
        fps = spec.fps if fps is None else fps
        from PIL import Image

        batched = isinstance(video, (list, tuple)) and not all(isinstance(v, Image.Image) for v in video)
        if batched and len(video) == 0:
            raise InvalidFramesError("An empty list of videos was passed; pass at least one video.")
        items = list(video) if batched else [video]
        return [sample(v, num_frames=num_frames, fps=fps, sampling=spec.frame_sampling) for v in items], batched

    def hypernetwork_inputs(
        self, videos: Sequence[Video], spec: HypernetworkInputSpec | None = None, padding_side: str | None = None
    ) -> dict[str, torch.Tensor]:
        """The hypernetwork's inputs for `videos`: each video then the internalization prompt of `spec` (default: the
        active hypernetwork's `input_spec`), on the model's device and dtype. `input_ids`/`attention_mask` `(B, S)`,
        `pixel_values` `(B, T, 3, P, P)`."""
        spec = self.input_spec if spec is None else spec
        return self._on_device(build_hypernetwork_inputs(self.processor, videos, spec, padding_side))

    def chunked_hypernetwork_inputs(self, videos: Sequence[Video | VideoReader]) -> ChunkedVideoInputs:
        """`hypernetwork_inputs` with the pixels made chunk by chunk (`frames_per_vision_chunk` frames, decoded from
        a `VideoReader` only then) as the vision tower reads them: what `generate_adapter` runs on."""
        param = next(self.model.parameters())
        inputs = build_chunked_hypernetwork_inputs(self.processor, videos, self.input_spec)
        return inputs.to(param.device, param.dtype)

    def text_inputs(self, questions: str | Sequence[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Inputs that ask `questions` (one per row) with no video in context — zero visual tokens — on the model's
        device; left-padded for batched generation. `input_ids`/`attention_mask` `(B, S)`."""
        return self._on_device(build_text_inputs(self.processor, questions, padding_side))

    def video_inputs(
        self, videos: Sequence[Video], questions: str | Sequence[str], padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """Inputs that ask `questions` (one for all videos, or one per video) with the video in context — the
        baseline an adapter replaces — up to the assistant's turn, on the model's device and dtype."""
        batch = build_video_inputs(
            self.processor, videos, questions, self.input_spec.video_size, True, padding_side=padding_side
        )
        return self._on_device(batch)

    def answer(
        self,
        questions: str | Sequence[str],
        adapter_names: str | Sequence[str] | None = None,
        videos: Sequence[VideoInput] | None = None,
        max_new_tokens: int = 16,
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Answer `questions` greedily in one batch and return the decoded answers (a string for a string).

        Args:
            questions: a question, or one per row.
            adapter_names: the generated adapter to answer with, or one per question (`"__base__"` for the base
                model); `None` uses the active adapter(s). Questions are asked text-only: zero visual tokens.
            videos: instead of an adapter, ask with these videos in context (one per question; generated adapters
                off): the baseline.
            max_new_tokens / generate_kwargs: passed to `generate`.
        """
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, **generate_kwargs}
        with self._lock:
            if videos is not None:
                loaded, _ = self.load_videos(list(videos))
                inputs = self.video_inputs(loaded, questions)
                with self.generated_adapters_disabled(), torch.no_grad():
                    output = self.model.generate(**inputs, **kwargs)
            else:
                inputs = self.text_inputs(questions)
                if isinstance(adapter_names, str):
                    adapter_names = [adapter_names] * len(questions)
                if adapter_names is not None:
                    kwargs["adapter_names"] = list(adapter_names)
                with torch.no_grad():
                    output = self.generate(**inputs, **kwargs)
        texts = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers = [text.strip() for text in texts]
        return answers[0] if single else answers

    def _on_device(self, batch: Any) -> dict[str, torch.Tensor]:
        param = next(self.model.parameters())
        return to_model_inputs(batch, param.device, param.dtype)

    # ------------------------------------------------------------------ video → LoRA
    @_serialized
    def generate_lora_factors(
        self,
        inputs: dict[str, torch.Tensor] | ChunkedVideoInputs,
        grad: bool = False,
        time_spans: torch.Tensor | None = None,
    ) -> LoraFactors:
        """Run the frozen VLM once over processor `inputs` (or `ChunkedVideoInputs`) and the active hypernetwork on
        each needed layer.

        `time_spans` `(B, 2)`: each video's first and last frame times in seconds (`inputs.video_time_spans`), read
        by a hypernetwork with `time_encoding` (required then with a processor batch; `ChunkedVideoInputs` give their
        videos' own by default) and ignored by one without.

        Returns name → (A `(B, r_total, in)`, B `(B, out, r_total)`); with `grad=True` they carry gradients to the
        hypernetwork (for training).
        """
        hypernetwork = self.hypernetwork
        mask = inputs["attention_mask"].bool()
        times: dict[str, torch.Tensor] = {}
        if self.hyper_config.time_encoding:
            if time_spans is None and isinstance(inputs, ChunkedVideoInputs):
                time_spans = video_time_spans(inputs.videos)
            if time_spans is None:
                raise UsageError(
                    "This hypernetwork reads each video's time span (time_encoding=True): pass "
                    "time_spans=peft_hyper.inputs.video_time_spans(videos) with processor inputs."
                )
            times["time_spans"] = time_spans.to(mask.device)
        factors: LoraFactors = {}

        def on_layer(layer_idx: int, states: torch.Tensor) -> None:
            factors.update(hypernetwork.generate_for_layer(states, mask, layer_idx, **times))

        with self.generated_adapters_disabled():
            stream_decoder_layer_inputs(
                self.model,
                inputs,
                hypernetwork.layers,
                on_layer,
                grad_in_callback=grad,
                frames_per_chunk=self.hyper_config.frames_per_vision_chunk,
            )
        return factors

    def generate_adapter(
        self,
        video: VideoInput | Sequence[VideoInput],
        num_frames: int | None = None,
        fps: float | None = None,
        segment_frames: int | Sequence[int] | None = None,
        max_rank: int | None = None,
        segment_batch_size: int = 8,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Turn a video into a standard PEFT LoRA state dict (keys as PEFT writes them, for `self.lora_config`).

        Args:
            video: a path, bytes, binary file object, uint8 tensor `(T, 3, H, W)`, list of PIL images, or a list of
                any of these (a batch: one VLM forward and one hypernetwork forward for all of them).
            num_frames / fps: frame sampling; defaults from the config — with `segment_frames`, the whole video at `fps`
                (the config's, else 1 fps) when `num_frames` is not given.
            segment_frames: cut each video's sampled frames into consecutive segments of this many frames, generate
                one adapter per segment (`segment_batch_size` segments per VLM and hypernetwork forward) and compose
                them in rank space (`compose_adapters`, weighted by the config's `segment_scaling`): rank
                `K·r + bias_rank` for `K` segments. Each segment's prompt carries its frames' times in the whole
                video, and so does its time span for a hypernetwork with `time_encoding`. A sequence gives each
                segment's frame count instead (segments at shot boundaries; `split_video`).
            max_rank: cap the rank of the result (exact when ΔW's rank allows, truncated SVD otherwise).

        Memory: frames are sampled first and decoded, processed and encoded by the vision tower
        `frames_per_vision_chunk` at a time, so that the frames in memory are those of one chunk however long the
        video. Without segments the text decoder still reads the whole video's tokens at once (its states grow with
        the frames); with segments it reads one batch of segments at a time.

        Returns:
            A state dict, or a list of state dicts for a list input. Tensors are float32, on the model's device.
        """
        if segment_frames is not None:
            num_frames, fps = self._segment_sampling(num_frames, fps)
        videos, batched = self.open_videos(video, num_frames, fps)
        if segment_frames is None:
            with torch.no_grad():
                inputs = self.chunked_hypernetwork_inputs(videos)
                state_dicts = factors_to_state_dicts(self.generate_lora_factors(inputs))
            if max_rank is not None:
                state_dicts = [self.compose_adapters([state_dict], max_rank=max_rank) for state_dict in state_dicts]
        else:
            state_dicts = [self._segmented_adapter(v, segment_frames, segment_batch_size, max_rank) for v in videos]
        for state_dict in state_dicts:
            check_finite(state_dict, "generated adapter")
        return state_dicts if batched else state_dicts[0]

    def generate_segment_adapters(
        self,
        video: VideoInput,
        segment_frames: int | Sequence[int],
        num_frames: int | None = None,
        fps: float | None = None,
        segment_batch_size: int = 8,
    ) -> list[dict[str, torch.Tensor]]:
        """The adapters of one video's consecutive segments of `segment_frames` sampled frames (or of the given frame
        counts, `split_video`), not composed: what `generate_adapter(..., segment_frames=)` composes, for callers that
        recombine segments themselves (evaluation controls, a selection of segments). `num_frames` / `fps` as in
        `generate_adapter`; `segment_batch_size` segments per VLM and hypernetwork forward.

        Returns one state dict per segment, in order, each of rank `r + bias_rank` (the last `bias_rank` ranks, the
        bias block, identical in all of them), float32 on the model's device.
        """
        return self._segment_adapters(self._segments(video, segment_frames, num_frames, fps), segment_batch_size)

    def _segments(
        self, video: VideoInput, segment_frames: int | Sequence[int], num_frames: int | None, fps: float | None
    ) -> list[VideoReader]:
        (reader,), _ = self.open_videos([video], *self._segment_sampling(num_frames, fps))
        return split_video(reader, segment_frames)

    def _segment_sampling(self, num_frames: int | None, fps: float | None) -> tuple[int, float | None]:
        """Frame sampling for segments: what is passed, or — without `num_frames` — the whole video, one frame every
        `1/fps` seconds (`fps`, else the config's, else 1 fps: SmolVLM2's rate and what Frames2LoRA is trained at),
        however long it is. A segment of 12 frames is then 12 seconds, like the clips the hypernetwork was trained on,
        rather than the config's `num_frames` spread over the whole video."""
        if num_frames is not None:
            return num_frames, fps
        return sys.maxsize, fps or self.input_spec.fps or DEFAULT_SEGMENT_FPS

    def _segmented_adapter(
        self, video: VideoReader, segment_frames: int | Sequence[int], batch_size: int, max_rank: int | None
    ) -> dict[str, torch.Tensor]:
        """The composed adapter of `video`'s segments: each batch's adapters are copied into the composed adapter
        (`Composition`) and dropped before the next batch runs, so memory holds one chunk of frames, one batch's states
        and adapters, and the composed adapter (`K·r + r_b` ranks, the output) however many segments there are."""
        segments = split_video(video, segment_frames)
        composition = Composition(len(segments), self.hyper_config.bias_rank, self.hyper_config.segment_scaling)
        for batch in self._segment_batches(segments, batch_size):
            # The batch's adapters are views of its factor tensors: passed as a temporary, no name keeps them alive
            # into the next batch's forward.
            composition.extend(self._batch_adapters(batch))
        return composition.result(max_rank)

    def _segment_adapters(self, segments: list[VideoReader], batch_size: int) -> list[dict[str, torch.Tensor]]:
        """The adapters of `segments`, in order, `batch_size` segments per VLM and hypernetwork forward, each checked
        finite."""
        parts = [part for batch in self._segment_batches(segments, batch_size) for part in self._batch_adapters(batch)]
        for part in parts:
            check_finite(part, "generated segment adapter")
        return parts

    @staticmethod
    def _segment_batches(segments: list[VideoReader], batch_size: int) -> list[list[VideoReader]]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidSamplingError(f"segment_batch_size must be a whole number >= 1, got {batch_size!r}.")
        return [segments[start : start + batch_size] for start in range(0, len(segments), batch_size)]

    def _batch_adapters(self, segments: list[VideoReader]) -> list[dict[str, torch.Tensor]]:
        """One adapter per segment from one VLM and one hypernetwork forward; a segment's frames are decoded and
        processed when the vision tower reads them."""
        inputs = self.chunked_hypernetwork_inputs(segments)
        with torch.no_grad():
            return factors_to_state_dicts(self.generate_lora_factors(inputs))

    def compose_adapters(
        self, adapters: Sequence[dict[str, torch.Tensor]], max_rank: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Compose adapters the active hypernetwork generated for non-overlapping segments of a video into one PEFT
        LoRA state dict: their generated ranks concatenated, the shared bias block once (`composition.py`)."""
        config = self.hyper_config
        return compose_adapters(
            adapters, max_rank=max_rank, bias_rank=config.bias_rank, scaling=config.segment_scaling
        )

    @_serialized
    def generate_bias_adapter(self) -> dict[str, torch.Tensor]:
        """The adapter made of the hypernetwork's input-independent block alone (video-dependent ranks zero): what the
        hypernetwork contributes without any video, a negative control for evaluations."""
        with torch.no_grad():
            state_dict = factors_to_state_dicts(self.hypernetwork.bias_factors())[0]
        check_finite(state_dict, "bias adapter")
        return state_dict

    @_serialized
    def internalize(
        self,
        video: VideoInput,
        adapter_name: str = "video",
        num_frames: int | None = None,
        fps: float | None = None,
        activate: bool = True,
        segment_frames: int | Sequence[int] | None = None,
        max_rank: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Generate the adapter of `video` (by segments with `segment_frames`; see `generate_adapter`), load it as
        `adapter_name` (an existing adapter of that name is replaced) and, with `activate`, make it the active
        adapter. Returns the state dict."""
        self._check_adapter_name(adapter_name)
        state_dict = self.generate_adapter(
            video, num_frames=num_frames, fps=fps, segment_frames=segment_frames, max_rank=max_rank
        )
        self.load_generated_adapter(state_dict, adapter_name, activate=activate)
        return state_dict

    # ------------------------------------------------------------------ long videos: questions routed to segments
    @property
    def router(self) -> SegmentRouter | None:
        """The active hypernetwork's segment router (`HyperLoraConfig.router_layer`; `routing.py`), or `None`."""
        return getattr(self.hypernetwork, "router", None)

    @_serialized
    def internalize_segments(
        self,
        video: VideoInput,
        adapter_name: str = "video",
        segment_frames: int | Sequence[int] = 12,
        num_frames: int | None = None,
        fps: float | None = None,
        activate: bool = True,
        segment_batch_size: int = 8,
    ) -> list[str]:
        """Internalize `video` by segments for `route`: the composition of its segments is loaded as `adapter_name`
        (what `internalize(video, adapter_name, segment_frames=...)` loads; activated with `activate`) and each
        segment's own adapter as `"{adapter_name}-segment{k}"`, with the segments' start times. Sampling and
        `segment_frames` as in `generate_adapter`. Memory: every segment's adapter stays resident (`K` adapters of
        rank `r + bias_rank`). `delete_adapter(adapter_name)` removes them all.

        Returns the segment adapters' names, in order.
        """
        self._check_adapter_name(adapter_name)
        segments = self._segments(video, segment_frames, num_frames, fps)
        parts = self._segment_adapters(segments, segment_batch_size)
        names = [f"{adapter_name}-segment{k}" for k in range(len(parts))]
        if adapter_name in self._segmented:
            self.delete_adapter(adapter_name)
        for name, part in zip(names, parts, strict=True):
            self.load_generated_adapter(part, name, activate=False)
        self.load_generated_adapter(self.compose_adapters(parts), adapter_name, activate=activate)
        frame_times = torch.tensor([t for segment in segments for t in segment.metadata.timestamps])
        self._segmented[adapter_name] = SegmentedVideo(tuple(names), frame_times, video_time_spans(segments)[:, 0])
        return names

    @_serialized
    def route(self, questions: str | Sequence[str], adapter_name: str, no_time_threshold: float = 0.5) -> list[str]:
        """For each question, the adapter to answer it with among those of `internalize_segments(video,
        adapter_name)`: the segment the router puts the most probability on, or `adapter_name` itself (the whole
        composition) when the probability that the question names no time is at least `no_time_threshold`. Pass the
        result to `answer(questions, adapter_names=...)`."""
        if adapter_name not in self._segmented:
            raise UsageError(
                f"'{adapter_name}' was not internalized by segments: call internalize_segments(video, "
                f"'{adapter_name}', segment_frames=...) first."
            )
        video = self._segmented[adapter_name]
        probabilities = self.segment_probabilities(questions, video.frame_times, video.starts)
        choices = choose_segments(probabilities, no_time_threshold)
        return [adapter_name if choice is None else video.names[choice] for choice in choices]

    def segment_probabilities(
        self, questions: str | Sequence[str], frame_times: torch.Tensor, segment_starts: torch.Tensor
    ) -> torch.Tensor:
        """`(Q, K + 1)`: the router's probability that each question is about each of `K` segments starting at
        `segment_starts` `(K,)` seconds of a video whose sampled frames are at `frame_times` `(T,)` seconds, then that
        it names no time (`SegmentRouter.segment_probabilities`)."""
        states, mask = self.question_states(questions)
        router = self.router
        with torch.no_grad():
            return router.segment_probabilities(
                router(states, mask), torch.as_tensor(frame_times).to(states.device), torch.as_tensor(segment_starts)
            )

    def question_states(self, questions: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """What the router reads: the states `(Q, S, hidden)` entering decoder layer `router_layer` of the frozen
        base for the questions' text-only prompts (`text_inputs`, right-padded), and their mask `(Q, S)` bool."""
        layer = self.hyper_config.router_layer
        if layer is None:
            raise UsageError(
                "This hypernetwork has no segment router (HyperLoraConfig.router_layer is None): train one with "
                "examples/long_video/train_router.py, or answer with the composed adapter."
            )
        inputs = self.text_inputs(questions, padding_side="right")
        captured: dict[int, torch.Tensor] = {}
        with self.generated_adapters_disabled():
            stream_decoder_layer_inputs(self.model, inputs, [layer], captured.__setitem__)
        return captured[layer], inputs["attention_mask"].bool()

    @_serialized
    def load_generated_adapter(
        self, state_dict: dict[str, torch.Tensor], adapter_name: str, activate: bool = True
    ) -> None:
        """Load a PEFT LoRA state dict for the active hypernetwork's targets as `adapter_name`: a generated adapter,
        or a composition of several (`compose_adapters`, any rank).

        A new name adds an adapter to PEFT's LoRA layers (the layers themselves are injected once, on the first
        adapter); an existing name of the same rank is overwritten in place (no re-injection, no other adapter
        touched), one of another rank is replaced. Nothing is loaded unless the whole state dict fits.
        """
        self._check_adapter_name(adapter_name)
        check_lora_state_dict(state_dict, f"adapter '{adapter_name}'")
        rank = self._check_state_dict_shapes(state_dict)
        self.adapters.load(adapter_name, state_dict, self._lora_config(rank))
        self.peft_config[adapter_name] = self.adapters.config(adapter_name)
        # re-apply the activation: injecting a new adapter may change PEFT's active adapter
        self.set_adapter(adapter_name if activate else self.active_adapter)

    def _check_state_dict_shapes(self, state_dict: dict[str, torch.Tensor]) -> int:
        """Check that `state_dict` holds A `(R, in)` and B `(out, R)` for exactly the active hypernetwork's targets,
        one rank `R` for all (the hypernetwork's total rank, or another for a composed adapter); return `R`."""
        ranks = {value.shape[0] if ".lora_A." in key else value.shape[-1] for key, value in state_dict.items()}
        rank = ranks.pop() if len(ranks) == 1 else 0
        expected: dict[str, tuple[int, int]] = {}
        for target in self.hypernetwork.targets:
            key_a, key_b = lora_state_dict_keys(target.name)
            expected[key_a] = (rank, target.in_features)
            expected[key_b] = (target.out_features, rank)
        got = {key: tuple(value.shape) for key, value in state_dict.items()}
        if rank < 1 or got != expected:
            missing = sorted(set(expected) - set(got))[:2]
            unexpected = sorted(set(got) - set(expected))[:2]
            wrong = [(k, got[k], expected[k]) for k in expected if k in got and got[k] != expected[k]][:2]
            raise IncompatibleBaseModelError(
                "This adapter does not fit the base model and hypernetwork it is loaded into (missing keys "
                f"{missing}, unexpected keys {unexpected}, wrong shapes {wrong}; every module needs A (rank, in) and "
                "B (out, rank) at one rank). Load it into the base model it was generated for."
            )
        return rank

    @_serialized
    def save_adapter(self, adapter_name: str, save_directory: str | os.PathLike) -> None:
        """Write a generated adapter as a plain PEFT LoRA directory (`adapter_config.json` +
        `adapter_model.safetensors`) that stock `PeftModel.from_pretrained` loads without peft-hyper.

        The directory is written whole or not at all (`saving.atomic_directory`): an existing one is replaced, and a
        save that is killed leaves the old directory or nothing."""
        if adapter_name not in self.adapters:
            raise ValueError(f"No generated adapter named '{adapter_name}'; resident: {self.generated_adapters}.")
        with atomic_directory(save_directory) as staging:
            self.adapters.save(adapter_name, staging)

    def save_adapter_state_dict(self, state_dict: dict[str, torch.Tensor], save_directory: str | os.PathLike) -> None:
        """Write a generated (or composed) adapter's state dict, without loading it, as the plain PEFT LoRA directory
        `save_adapter` would write for it — whole or not at all."""
        check_lora_state_dict(state_dict, "adapter")
        config = self._lora_config(self._check_state_dict_shapes(state_dict))
        with atomic_directory(save_directory) as staging:
            write_lora_directory(state_dict, config, type(self.model), staging)

    @contextmanager
    def lora_factors_applied(self, factors: LoraFactors) -> Iterator[None]:
        """Within the context, every target layer adds `x @ A[b].T @ B[b].T` for batch item `b` to its output —
        differentiably, so that training can backpropagate through generated factors into the hypernetwork.

        factors: name → (A `(B, r, in)`, B `(B, out, r)`), as from `generate_lora_factors`. Resident generated
        adapters are disabled meanwhile. Numerically this is what PEFT's LoRA layer computes with scaling 1 (tested).
        """

        def make_hook(lora_a: torch.Tensor, lora_b: torch.Tensor):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
                x = args[0].to(lora_a.dtype)  # (B, S, in)
                delta = torch.einsum("bsr,bor->bso", torch.einsum("bsi,bri->bsr", x, lora_a), lora_b)
                return output + delta.to(output.dtype)

            return hook

        handles = []
        with self.generated_adapters_disabled():
            try:
                for name, (lora_a, lora_b) in factors.items():
                    module = self.model.get_submodule(name)
                    base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
                    handles.append(base.register_forward_hook(make_hook(lora_a, lora_b)))
                yield
            finally:
                for handle in handles:
                    handle.remove()

    # ------------------------------------------------------------------ inference
    def train(self, mode: bool = True) -> HyperLoraModel:
        super().train(mode)
        if "adapters" in self.__dict__:  # absent while BaseTuner's __init__ runs
            self.adapters.set_training(mode)
        return self

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        # `PeftModel.forward`/`generate` run the base model inside this context: the lock is held for the whole call
        with self._lock:
            if not self.adapters.names or kwargs.get("adapter_names") is None:
                yield
                return
            # per-sample adapters apply even while a hypernetwork is the active adapter
            with self.adapters.mixed_batch(*args, **kwargs):
                yield

    def forward(self, *args: Any, **kwargs: Any):
        with self._enable_peft_forward_hooks(*args, **kwargs):
            kwargs.pop("adapter_names", None)
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any):
        """`base_model.generate` with the active generated adapter(s); `adapter_names=[...]` gives one per sample."""
        with self._enable_peft_forward_hooks(*args, **kwargs):
            kwargs.pop("adapter_names", None)
            return self.model.generate(*args, **kwargs)

    @property
    def _lock(self) -> threading.RLock:
        """The lock that serialises calls on this model (created on first use; see the module docstring)."""
        lock = self.__dict__.get("_call_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_call_lock", threading.RLock())
        return lock

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_call_lock", None)  # a lock cannot be copied or pickled; a copy makes its own on first use
        return state


def _architecture_mismatch(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    differences = [
        f"{key}: checkpoint {expected.get(key)!r} vs base model {actual.get(key)!r}"
        for key in sorted(set(expected) | set(actual))
        if expected.get(key) != actual.get(key)
    ]
    return (
        "The hypernetwork was made for a different base model ("
        + "; ".join(d[:200] for d in differences)
        + "). Load it onto the base model named in its adapter_config.json (base_model_name_or_path)."
    )
