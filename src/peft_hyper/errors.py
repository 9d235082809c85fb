"""Typed errors raised by peft-hyper. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class PeftHyperError(Exception):
    """Base class of every error raised on purpose by peft-hyper."""


class VideoNotFoundError(PeftHyperError, FileNotFoundError):
    """The video path does not exist."""


class VideoDecodeError(PeftHyperError, ValueError):
    """The input is not a decodable video: not a video container, corrupt or truncated."""


class EmptyVideoError(VideoDecodeError):
    """The video decodes but yields zero frames."""


class InvalidFramesError(PeftHyperError, ValueError):
    """Pre-decoded frames have the wrong type, dtype or shape."""


class IncompatibleBaseModelError(PeftHyperError, ValueError):
    """A checkpoint or adapter was made for a base model with another architecture."""


class AdapterRankError(PeftHyperError, ValueError):
    """An adapter's rank is above what a serving engine was started to take (vLLM's `--max-lora-rank`) or can take
    at all (512 for vLLM)."""


class ServingError(PeftHyperError, RuntimeError):
    """The vLLM server cannot be found, started or reached, or refused a request (its own message is quoted)."""


class NonFiniteAdapterError(PeftHyperError, FloatingPointError):
    """A generated or loaded adapter contains NaN or infinite weights."""


class InvalidAdapterNameError(PeftHyperError, ValueError):
    """An adapter name that PEFT cannot hold (collides with a PEFT prefix, reserved, or not a plain identifier)."""


class ManifestError(PeftHyperError, ValueError):
    """A JSONL manifest line is not valid JSON or lacks a required field."""


class DatasetValidationError(PeftHyperError, ValueError):
    """A training dataset is empty, lacks a required column or has a column of the wrong type."""


class InvalidRowError(PeftHyperError, ValueError):
    """A dataset row cannot be used (missing or corrupt video, missing prompt or target)."""


class MissingProcessorError(PeftHyperError, RuntimeError):
    """No processor is attached to the model and none could be found next to the checkpoint or the base model."""


class InvalidAdapterError(PeftHyperError, ValueError):
    """A LoRA state dict that is not a mapping of PEFT LoRA keys to finite floating-point tensors."""


class IncompleteCheckpointError(PeftHyperError, ValueError):
    """A hypernetwork checkpoint lacks some of the weights of the hypernetwork it describes."""


class OutputPathError(PeftHyperError, OSError):
    """An output path cannot be written: it is a file where a directory is needed (or the reverse), its parent is not
    writable, or it is a directory that must not be replaced wholesale (the working directory, home, a mount point)."""


class InvalidSamplingError(PeftHyperError, ValueError):
    """A frame-sampling argument (`num_frames`, `fps`, `source_fps`) has the wrong type or is out of range."""


class UsageError(PeftHyperError, ValueError):
    """An argument is out of range, of the wrong form or in a combination that cannot work."""


class CheckpointError(PeftHyperError, ValueError):
    """A checkpoint or adapter directory is missing a file, is truncated or corrupt, or is of another kind (a plain
    LoRA adapter where a Frames2LoRA checkpoint is expected, or the other way round)."""


class EvalDataError(PeftHyperError, ValueError):
    """Evaluation data in a format that is not accepted, empty, or missing a required column or split."""


class EvalDataNotFoundError(PeftHyperError, FileNotFoundError):
    """Evaluation data that is neither a local path nor a dataset that could be loaded from the Hub."""


class ReferenceCheckpointError(PeftHyperError, ValueError):
    """A file given to the converter is not a reference Frames2LoRA checkpoint: not a torch archive, truncated, or
    without the reference's entries and tensors."""


class UnsafeCheckpointError(ReferenceCheckpointError):
    """A checkpoint names a Python global outside the converter's allowlist. It is refused before unpickling, so
    nothing in the file ran."""


class UnsupportedReferenceOptionError(ReferenceCheckpointError):
    """A reference checkpoint was trained with option values that peft-hyper does not implement (each is named)."""
