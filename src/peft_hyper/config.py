"""`HyperLoraConfig`: the configuration of a Frames2LoRA hypernetwork as a PEFT method."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft.config import PeftConfig

from .composition import SEGMENT_SCALINGS
from .errors import CheckpointError
from .registration import PEFT_TYPE_HYPERLORA
from .video import FRAME_SAMPLING, REFERENCE_FPS

DEFAULT_TARGET_MODULES = r".*text_model\.layers\.\d+\.mlp\.down_proj"
DEFAULT_INTERNALIZE_PROMPT = "Internalize this video for later captioning."

ARCHITECTURES = ("peft-hyper", "frames2lora")
# The defaults each architecture gives the fields left at `None` (the other fields default alike for both).
ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "peft-hyper": {"num_heads": 8, "head_dim": 64, "position_encoding": True, "frame_sampling": "uniform"},
    "frames2lora": {
        "num_heads": 16,
        "head_dim": 128,
        "num_key_value_heads": 4,
        "position_encoding": False,
        "frame_sampling": "reference",
    },
}
REFERENCE_VIDEO_SIZE = 384
"""The longest edge the reference resizes frames to; the default `video_size` of `frame_sampling="reference"`."""


PACKAGE_PATH_PREFIX = "peft_hyper://"


def resolve_package_path(path: str | None) -> str | None:
    """`peft_hyper://<relative path>` → that path inside the installed package (how the embedded checkpoint names its
    base model, wherever the package is installed); anything else is returned unchanged."""
    if path is None or not path.startswith(PACKAGE_PATH_PREFIX):
        return path
    return str(Path(__file__).parent / path.removeprefix(PACKAGE_PATH_PREFIX))


@dataclass
class HyperLoraConfig(PeftConfig):
    """
    Configuration of a [`HyperLoraModel`]: a perceiver hypernetwork that reads a frozen SmolVLM's text-decoder hidden
    states over a video and emits a LoRA adapter for that same decoder in one forward pass (Frames2LoRA).

    Two architectures (`architecture`): `"peft-hyper"` (default), this package's own perceiver and heads, and
    `"frames2lora"`, the reference implementation's hypernetwork layer for layer (`reference_hypernetwork.py`; the
    released reference checkpoints convert to it with `peft_hyper.convert_reference_checkpoint`). Both share rank 16 on
    the text decoder's `down_proj`, latent size 512, 8 latent queries, 9 cross-attention blocks and 12 frames; fields
    left at `None` take the chosen architecture's defaults (`ARCHITECTURE_DEFAULTS`). `docs/design.md` lists where the
    two differ, and why.
    """

    architecture: str = field(
        default="peft-hyper",
        metadata={
            "help": (
                "The hypernetwork: 'peft-hyper' (context RMSNorm + linear projection with a position signal and a layer "
                "embedding, LayerNorm/GELU perceiver blocks, a rank mixer and biased head per target kind) or "
                "'frames2lora' (the reference's: SwiGLU context projection, Idefics2-style perceiver layers with "
                "grouped-query attention over [context; latents], a one-layer decoder making the rank slots of all "
                "target kinds, a residual MLP, per-layer heads without bias, scales per layer and rank, and the "
                "reference's LoRA alpha 2·r^1.5 folded into the exported adapters)."
            )
        },
    )

    r: int = field(default=16, metadata={"help": "Rank of the video-dependent part of each generated LoRA adapter."})
    target_modules: str | list[str] = field(
        default=DEFAULT_TARGET_MODULES,
        metadata={
            "help": (
                "Text-decoder linear layers that receive a generated adapter. A string is a regex that must fully match "
                "the module name (as in PEFT); a list holds module names or name suffixes (e.g. ['down_proj']). Either "
                "way only modules inside the text decoder layers (`text_model.layers.<i>.`) may match: the vision tower "
                "has `q_proj/k_proj/v_proj` too, and a target outside the decoder raises an error."
            )
        },
    )
    bias_rank: int | None = field(
        default=None,
        metadata={
            "help": (
                "Rank of the input-independent 'bias LoRA' block appended to every generated adapter (learned A and B, "
                "B initialised to zero). `None` uses `r`; `0` disables the block. Exported adapters have rank "
                "`r + bias_rank`."
            )
        },
    )
    latent_dim: int = field(default=512, metadata={"help": "Width of the perceiver latents."})
    num_latents: int = field(default=8, metadata={"help": "Number of learned latent queries of the perceiver."})
    num_blocks: int = field(default=9, metadata={"help": "Number of perceiver cross-attention blocks."})
    num_heads: int | None = field(
        default=None,
        metadata={
            "help": "Attention (query) heads in each perceiver block; `None`: 8 ('peft-hyper'), 16 ('frames2lora')."
        },
    )
    head_dim: int | None = field(
        default=None,
        metadata={"help": "Width of each perceiver attention head; `None`: 64 ('peft-hyper'), 128 ('frames2lora')."},
    )
    num_key_value_heads: int | None = field(
        default=None,
        metadata={
            "help": (
                "Key/value heads of the perceiver attention (grouped-query attention, 'frames2lora' only; it must "
                "divide `num_heads`). `None`: 4 ('frames2lora'), `num_heads` ('peft-hyper', which has no other)."
            )
        },
    )
    ff_mult: int = field(default=4, metadata={"help": "Hidden width of the perceiver feed-forward, in `latent_dim`s."})
    latent_self_attention: bool = field(
        default=False,
        metadata={
            "help": "Add a latent self-attention layer to every block ('peft-hyper' only; the reference has none)."
        },
    )
    position_encoding: bool | None = field(
        default=None,
        metadata={
            "help": (
                "Add a sinusoidal encoding of each token's normalised position (0 at the first, 1 at the last valid "
                "token) to the perceiver context. Needed for temporal questions and for generalising across frame "
                "counts; the reference has none. `None`: on for 'peft-hyper'; 'frames2lora' has none (only `False`)."
            )
        },
    )
    time_encoding: bool = field(
        default=False,
        metadata={
            "help": (
                "Give the hypernetwork each video's time span — its first and last sampled frames' times in seconds, "
                "from the start of the whole video for a segment (`inputs.video_time_spans`) — as sinusoidal features "
                "added to its latent queries, so that a segment's adapter can carry when in the video it happened "
                "(time-cued questions about composed segments). The projection starts at zero, so a hypernetwork "
                "continued with it generates what it did before. 'peft-hyper' only."
            )
        },
    )
    segment_scaling: str = field(
        default="sum",
        metadata={
            "help": (
                "How a composition of K segments' adapters weighs each segment's generated ranks (`composition.py`): "
                "'sum' (as generated; ΔW grows with K), 'sqrt' (× 1/√K) or 'mean' (× 1/K); the bias block counts "
                "once. Segmented internalization, `compose_adapters` and training through composition all use it."
            )
        },
    )
    router_layer: int | None = field(
        default=None,
        metadata={
            "help": (
                "Give the hypernetwork a segment router (`routing.py`) reading the questions' states entering this "
                "decoder layer of the base: it says which time of a long video a question is about, so that "
                "`HyperLoraModel.route` answers it with that segment's adapter instead of the whole composition. "
                "`None`: no router. Trained on its own (`examples/long_video/train_router.py`)."
            )
        },
    )
    router_dim: int = field(default=128, metadata={"help": "Width of the segment router (with `router_layer`)."})
    init_scale_a: float = field(default=1.0, metadata={"help": "Initial value of the learned scale of generated A."})
    init_scale_b: float = field(
        default=0.0,
        metadata={
            "help": "Initial value of the learned scale of generated B; 0 makes every adapter ΔW = 0 at step 0."
        },
    )
    num_frames: int = field(default=12, metadata={"help": "Frames sampled from a video when a call gives no count."})
    fps: float | None = field(
        default=None,
        metadata={
            "help": (
                "Sample frames at this rate instead (capped at `num_frames`); `None` samples uniformly. With "
                "`frame_sampling='reference'` the target rate, `None` there meaning 1 fps (the reference's)."
            )
        },
    )
    frame_sampling: str | None = field(
        default=None,
        metadata={
            "help": (
                "How frames are chosen by presentation time (`video.load_video`): 'uniform' (one frame at the centre of "
                "each of `num_frames` equal slots, or one per `1/fps` s) or 'reference' (the reference's rule: at most "
                "`num_frames` at `fps`, the first and last second skipped on clips longer than "
                "`2 + num_frames * fps` s, times spread by linspace with both ends included). `None`: 'uniform' for "
                "'peft-hyper', 'reference' for 'frames2lora'."
            )
        },
    )
    video_size: int | None = field(
        default=None,
        metadata={
            "help": (
                "Longest edge, in pixels, the processor first resizes frames to (before its square resize to the "
                "model's image size); `None` keeps the processor's own setting, except with "
                "`frame_sampling='reference'`, where it means 384 (the reference's)."
            )
        },
    )
    frames_per_vision_chunk: int | None = field(
        default=16,
        metadata={
            "help": (
                "Frames the vision tower encodes at a time while internalizing, so that its memory stays that of one "
                "chunk however long the video (results are unchanged up to float rounding); `None` encodes all "
                "frames at once."
            )
        },
    )
    internalize_prompt: str = field(
        default=DEFAULT_INTERNALIZE_PROMPT,
        metadata={"help": "The instruction placed after the video in the hypernetwork's forward pass."},
    )
    internalize_generation_prompt: bool = field(
        default=False,
        metadata={
            "help": (
                "End the hypernetwork's input with the assistant turn's opening (the chat template's generation "
                "prompt), as when the VLM is asked to answer `internalize_prompt`: the states it reads are then those "
                "of the VLM about to answer it. With a prompt the base was trained on, such as 'Describe the video.', "
                "the last tokens already summarise the video (the reference uses neither)."
            )
        },
    )
    base_model_architecture: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": (
                "Filled in when the hypernetwork is created: the base model's text-decoder sizes and the shapes of the "
                "targeted modules. Loading onto a base model that differs raises `IncompatibleBaseModelError`."
            )
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE_HYPERLORA
        if self.task_type is not None:
            raise ValueError(
                "HyperLoraConfig does not take a task_type: leave it as None so that AutoPeftModel can load the "
                "checkpoint with the base model class recorded at save time."
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"HyperLoraConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}."
            )
        for name, value in ARCHITECTURE_DEFAULTS[self.architecture].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_heads
        if self.frame_sampling not in FRAME_SAMPLING:
            raise ValueError(
                f"HyperLoraConfig.frame_sampling must be one of {FRAME_SAMPLING}, got {self.frame_sampling!r}."
            )
        if self.frame_sampling == "reference":
            self.fps = REFERENCE_FPS if self.fps is None else self.fps
            self.video_size = REFERENCE_VIDEO_SIZE if self.video_size is None else self.video_size
        if self.bias_rank is None:
            self.bias_rank = self.r
        self.base_model_name_or_path = resolve_package_path(self.base_model_name_or_path)
        positive = ("r", "latent_dim", "num_latents", "num_blocks", "num_heads", "head_dim", "num_key_value_heads")
        for name in (*positive, "ff_mult", "num_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"HyperLoraConfig.{name} must be a positive integer, got {value!r}.")
        self._check_architecture_options()
        if self.bias_rank < 0:
            raise ValueError(f"HyperLoraConfig.bias_rank must be >= 0, got {self.bias_rank}.")
        if self.frames_per_vision_chunk is not None and self.frames_per_vision_chunk < 1:
            raise ValueError(f"frames_per_vision_chunk must be >= 1 or None, got {self.frames_per_vision_chunk}.")
        if self.router_layer is not None and (not isinstance(self.router_layer, int) or self.router_layer < 0):
            raise ValueError(
                f"HyperLoraConfig.router_layer must be a decoder layer index >= 0 or None, got {self.router_layer!r}."
            )
        if not isinstance(self.router_dim, int) or self.router_dim < 1:
            raise ValueError(f"HyperLoraConfig.router_dim must be a positive integer, got {self.router_dim!r}.")
        if self.segment_scaling not in SEGMENT_SCALINGS:
            raise ValueError(
                f"HyperLoraConfig.segment_scaling must be one of {SEGMENT_SCALINGS}, got {self.segment_scaling!r}."
            )
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"HyperLoraConfig.fps must be > 0 or None, got {self.fps}.")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        # Where this config was loaded from; lets the tuner find the processor saved next to the checkpoint.
        self._source_path: str | None = None
        # The processor the tuner uses; saved next to the config. Not a dataclass field, so never serialised.
        self._processor = None

    def _check_architecture_options(self) -> None:
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(
                f"HyperLoraConfig.num_key_value_heads ({self.num_key_value_heads}) must divide num_heads "
                f"({self.num_heads})."
            )
        if self.architecture == "peft-hyper" and self.num_key_value_heads != self.num_heads:
            raise ValueError(
                "The 'peft-hyper' architecture has no grouped-query attention: leave num_key_value_heads at None (or "
                "equal to num_heads), or choose architecture='frames2lora'."
            )
        if self.architecture == "frames2lora":
            options = ("latent_self_attention", "position_encoding", "time_encoding")
            unsupported = [name for name in options if getattr(self, name)]
            if unsupported:
                raise ValueError(
                    f"The 'frames2lora' architecture (the reference's hypernetwork) has no {' or '.join(unsupported)}: "
                    "set it to False, or choose architecture='peft-hyper'."
                )

    @property
    def total_rank(self) -> int:
        """Rank of the exported LoRA adapters: the generated block plus the bias block."""
        return self.r + self.bias_rank

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Save `adapter_config.json`, the attached processor's files and the Frames2LoRA model card beside it."""
        from .model_card import write_default_model_card

        super().save_pretrained(save_directory, **kwargs)
        if self._processor is not None:
            self._processor.save_pretrained(save_directory)
        write_default_model_card(save_directory, self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        path = str(pretrained_model_name_or_path)
        config._source_path = os.path.join(path, subfolder) if subfolder else path
        return config


def read_adapter_config(path: str | os.PathLike, directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in the `adapter_config.json` at `path` of a checkpoint or adapter `directory`.

    Raises:
        CheckpointError: the file is missing, or is not a JSON object (truncated, garbled), saying what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"'{directory}' has no adapter_config.json; pass a directory written by `save_pretrained` or "
            "`frames2lora internalize`."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"'{path}' is not a JSON object (truncated or corrupt?); write or download the directory again."
        )
    return config
