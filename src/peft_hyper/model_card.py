"""Model cards of Frames2LoRA checkpoints, rendered from `templates/model_card.md` with `huggingface_hub.ModelCard`.

`HyperLoraConfig.save_pretrained` writes one beside every saved hypernetwork; `HyperLoraTrainer` renders it with the
training run's data, hyperparameters and metrics for `push_to_hub`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
TAGS = ("frames2lora", "video-text-to-text")
PIPELINE_TAG = "video-text-to-text"


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


def write_default_model_card(save_directory: str | Path, config: Any) -> None:
    """Write the Frames2LoRA card to `save_directory/README.md`, replacing PEFT's generic placeholder card but never
    a card someone wrote (or a Frames2LoRA card already there, e.g. the trainer's)."""
    path = Path(save_directory) / "README.md"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if "frames2lora" in text or "[More Information Needed]" not in text:
            return
    render_model_card(config, repo_id=Path(save_directory).resolve().name).save(path)
