"""peft-hyper: Frames2LoRA for PEFT — turn a video into a LoRA adapter for a frozen video-language model.

Importing this package registers the "HYPERLORA" PEFT type, so that `get_peft_model`, `PeftModel.from_pretrained`
and `AutoPeftModel.from_pretrained` handle `HyperLoraConfig` checkpoints.
"""

from peft.utils import register_peft_method

from .composition import compose_adapters
from .config import HyperLoraConfig
from .convert_reference import convert_reference_checkpoint
from .data import VideoTextCollator, load_manifest, validate_dataset
from .errors import (
    AdapterRankError,
    DatasetValidationError,
    EmptyVideoError,
    IncompatibleBaseModelError,
    IncompleteCheckpointError,
    InvalidAdapterError,
    InvalidAdapterNameError,
    InvalidFramesError,
    InvalidRowError,
    InvalidSamplingError,
    ManifestError,
    MissingProcessorError,
    NonFiniteAdapterError,
    OutputPathError,
    PeftHyperError,
    ReferenceCheckpointError,
    ServingError,
    UnsafeCheckpointError,
    UnsupportedReferenceOptionError,
    VideoDecodeError,
    VideoNotFoundError,
)
from .model import HyperLoraModel
from .trainer import HyperLoraTrainer, cache_teacher_targets
from .video import Video, VideoReader, load_video, open_video, split_video

__version__ = "0.1.0.dev0"

register_peft_method(name="hyperlora", config_cls=HyperLoraConfig, model_cls=HyperLoraModel, prefix="hypernetworks")

__all__ = [
    "AdapterRankError",
    "DatasetValidationError",
    "EmptyVideoError",
    "HyperLoraConfig",
    "HyperLoraModel",
    "HyperLoraTrainer",
    "IncompatibleBaseModelError",
    "IncompleteCheckpointError",
    "InvalidAdapterError",
    "InvalidAdapterNameError",
    "InvalidFramesError",
    "InvalidRowError",
    "InvalidSamplingError",
    "ManifestError",
    "MissingProcessorError",
    "NonFiniteAdapterError",
    "OutputPathError",
    "PeftHyperError",
    "ReferenceCheckpointError",
    "ServingError",
    "UnsafeCheckpointError",
    "UnsupportedReferenceOptionError",
    "Video",
    "VideoDecodeError",
    "VideoNotFoundError",
    "VideoReader",
    "VideoTextCollator",
    "cache_teacher_targets",
    "compose_adapters",
    "convert_reference_checkpoint",
    "load_manifest",
    "load_video",
    "open_video",
    "split_video",
    "validate_dataset",
]
