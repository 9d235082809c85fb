"""Model cards of Frames2LoRA checkpoints, rendered from `templates/model_card.md` with `huggingface_hub.ModelCard`.

`HyperLoraConfig.save_pretrained` writes one beside every saved hypernetwork; `HyperLoraTrainer` renders it with the
training run's data, hyperparameters and metrics for `push_to_hub`. Checkpoints converted from the reference's released
files (`convert_reference.py`) get `templates/converted_model_card.md` instead: source file and sha256, licence, credit
and how they were converted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .saving import atomic_write_text, final_path

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
CONVERTED_TEMPLATE = Path(__file__).parent / "templates" / "converted_model_card.md"
CONVERTED_TAG = "frames2lora-reference"  # the tag of cards of converted reference checkpoints
TAGS = ("frames2lora", "video-text-to-text")
PIPELINE_TAG = "video-text-to-text"
# Lines of a card body that PEFT's `PeftModel.create_or_update_model_card` writes on its own (and blank ones).
_PEFT_ADDED_LINE = re.compile(
    r"^(|### Framework versions|## Training procedure|- PEFT \S+|- \w+: .*"
    r"|The following `bitsandbytes` quantization config was used during training:)$"
)


def framework_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    from . import __version__

    return {
        "peft-hyper": __version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def render_model_card(
    config: Any,
    repo_id: str,
    model_name: str | None = None,
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
    training_data: str = "Not recorded.",
    objective: str = "not recorded",
    hyperparameters: Mapping[str, Any] | None = None,
    metrics: Mapping[str, str] | None = None,
) -> Any:
    """The `ModelCard` of the hypernetwork described by `config` (a `HyperLoraConfig`)."""
    from huggingface_hub import ModelCard, ModelCardData

    base_model = config.base_model_name_or_path or "unknown"
    card_data = ModelCardData(
        library_name="peft",
        base_model=base_model,
        tags=list(dict.fromkeys([*TAGS, *tags])),
        pipeline_tag=PIPELINE_TAG,
        datasets=list(datasets) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name or repo_id.rstrip("/").split("/")[-1],
        base_model=base_model,
        repo_id=repo_id,
        total_rank=config.total_rank,
        target_modules=config.target_modules,
        training_data=training_data,
        objective=objective,
        hyperparameters=dict(hyperparameters or {}),
        metrics=dict(metrics or {}),
        versions=framework_versions(),
    )


def render_converted_model_card(
    config: Any,
    repo_id: str,
    source_file: str,
    source_sha256: str,
    stored_base: str | None,
    options: Mapping[str, Any],
    num_parameters: int,
) -> Any:
    """The `ModelCard` of a checkpoint converted from a reference Frames2LoRA `.pt` file (MIT, as the reference)."""
    from huggingface_hub import ModelCard, ModelCardData

    base_model = config.base_model_name_or_path or "unknown"
    card_data = ModelCardData(
        library_name="peft",
        base_model=stored_base or base_model,
        license="mit",
        tags=[*TAGS, CONVERTED_TAG],
        pipeline_tag=PIPELINE_TAG,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CONVERTED_TEMPLATE),
        model_name=repo_id.rstrip("/").split("/")[-1],
        base_model=base_model,
        repo_id=repo_id,
        total_rank=config.total_rank,
        target_modules=config.target_modules,
        num_frames=config.num_frames,
        fps=config.fps,
        video_size=config.video_size,
        prompt=config.internalize_prompt,
        source_file=source_file,
        source_sha256=source_sha256,
        stored_base=stored_base or "not recorded",
        options=dict(options),
        num_parameters=f"{num_parameters:,}",
        versions=framework_versions(),
    )


def is_placeholder_card(text: str) -> bool:
    """Whether a README is no real card: PEFT's generic template, or nothing but YAML metadata and the lines PEFT's
    `create_or_update_model_card` adds (framework versions, quantization config) — what PEFT leaves when it updates a
    README that a killed write had emptied."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    metadata = REGEX_YAML_BLOCK.search(text)
    body = text[metadata.end() :] if metadata else text
    if all(_PEFT_ADDED_LINE.match(line.strip()) for line in body.splitlines()):
        return True
    return "[More Information Needed]" in text and "frames2lora" not in text


def converted_card_of_source(config: Any) -> str | None:
    """The card of the directory `config` was loaded from, if that is a converted reference checkpoint's card."""
    source = getattr(config, "_source_path", None)
    card = Path(source) / "README.md" if source else None
    if card is None or not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    return text if CONVERTED_TAG in text else None


def write_default_model_card(save_directory: str | Path, config: Any) -> None:
    """Write the Frames2LoRA card to `save_directory/README.md` (atomically), replacing a placeholder
    ([`is_placeholder_card`]) but never a card someone wrote (or a Frames2LoRA card already there, e.g. the
    trainer's). The card is named after the directory — its final name when `save_directory` is a staging directory
    of `peft_hyper.saving`."""
    path = Path(save_directory) / "README.md"
    if path.is_file() and not is_placeholder_card(path.read_text(encoding="utf-8")):
        return
    converted = converted_card_of_source(config)
    if (
        converted is not None
    ):  # a converted reference checkpoint keeps its card (source, sha256, licence) when re-saved
        atomic_write_text(path, converted)
        return
    card = render_model_card(config, repo_id=final_path(save_directory).resolve().name)
    atomic_write_text(path, str(card))
