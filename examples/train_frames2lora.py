#!/usr/bin/env python
"""Train a Frames2LoRA hypernetwork with `HyperLoraTrainer`.

Single process (a local tiny model and a reference-format JSONL manifest):

    python examples/train_frames2lora.py --model ./tiny-smolvlm --train_manifest train.jsonl --output_dir out \
        --max_steps 100 --per_device_train_batch_size 4 --learning_rate 3e-3

Online, with the real model (and optionally a Hub dataset with `video`, `prompt`, `target` columns):

    python examples/train_frames2lora.py --model HuggingFaceTB/SmolVLM2-500M-Video-Instruct \
        --train_manifest finevideo_train.jsonl --output_dir frames2lora-500m --bf16 --push_to_hub

Several processes (accelerate / torch DDP). On CPU, accelerate 1.15's `--cpu` launcher starts one process unless
mpirun is used; `--multi_gpu --use_cpu` runs torchrun with the gloo backend instead:

    accelerate launch --multi_gpu --num_processes 2 --use_cpu examples/train_frames2lora.py --model ./tiny-smolvlm ...
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field

import torch
from peft import get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser, TrainingArguments, set_seed

import peft_hyper
from peft_hyper.data import load_manifest
from peft_hyper.trainer import HyperLoraTrainer, cache_teacher_targets


@dataclass
class ModelArguments:
    """The frozen video-language model and the hypernetwork's shape."""

    model: str = field(
        default="HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
        metadata={"help": "Base model: a Hub id or a local directory (model + processor)."},
    )
    dtype: str = field(default="float32", metadata={"help": "Base model dtype: float32, bfloat16 or float16."})
    r: int = field(default=16, metadata={"help": "Rank of the generated LoRA adapters."})
    latent_dim: int = field(default=512, metadata={"help": "Perceiver latent size."})
    num_latents: int = field(default=8, metadata={"help": "Perceiver latent queries."})
    num_blocks: int = field(default=9, metadata={"help": "Perceiver cross-attention blocks."})
    num_heads: int = field(default=8, metadata={"help": "Perceiver attention heads."})
    head_dim: int = field(default=64, metadata={"help": "Perceiver head width."})
    num_frames: int = field(default=12, metadata={"help": "Frames sampled per video."})
    video_size: int | None = field(default=None, metadata={"help": "Longest frame edge (None: the processor's)."})


@dataclass
class DataArguments:
    """Where the (video, prompt, target) rows come from."""

    train_manifest: str | None = field(default=None, metadata={"help": "Reference-format JSONL manifest."})
    eval_manifest: str | None = field(default=None, metadata={"help": "Evaluation manifest."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` name with `video`, `prompt`, `target` columns instead."}
    )
    train_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split of `dataset_name` to evaluate on."})
    video_root: str | None = field(default=None, metadata={"help": "Root of relative `video_path`s."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    on_bad_row: str = field(default="skip", metadata={"help": "'skip' or 'raise' for unreadable videos."})
    teacher_targets: bool = field(
        default=False, metadata={"help": "Replace targets by cached answers of the VLM with the video in context."}
    )
    teacher_max_new_tokens: int = field(default=64, metadata={"help": "Length cap of cached teacher answers."})


@dataclass
class HyperLoraArguments:
    """`HyperLoraTrainer` options."""

    objective: str = field(default="ce", metadata={"help": "'ce', 'kl' or 'ce+kl'."})
    kl_top_k: int | None = field(default=None, metadata={"help": "Distil from the teacher's top-K tokens."})
    kl_temperature: float = field(default=1.0, metadata={"help": "KL temperature."})
    l1_penalty: float = field(default=0.0, metadata={"help": "L1 penalty weight on generated LoRA weights."})
    weights_digest_dir: str | None = field(
        default=None, metadata={"help": "Write each rank's sha256 of the final hypernetwork weights here."}
    )


def hypernetwork_digest(model: torch.nn.Module) -> str:
    """sha256 over the hypernetwork's parameters (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if ".hypernetworks." in name:
            tensor = param.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def load_datasets(data_args: DataArguments):
    from datasets import load_dataset

    if data_args.train_manifest:
        train = load_manifest(data_args.train_manifest, video_root=data_args.video_root)
        evaluation = load_manifest(data_args.eval_manifest, data_args.video_root) if data_args.eval_manifest else None
    elif data_args.dataset_name:
        train = load_dataset(data_args.dataset_name, split=data_args.train_split)
        evaluation = load_dataset(data_args.dataset_name, split=data_args.eval_split) if data_args.eval_split else None
    else:
        raise ValueError("Pass --train_manifest or --dataset_name.")
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    return train, evaluation


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, HyperLoraArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, hyper_args, training_args = parser.parse_json_file(sys.argv[1])
    else:
        model_args, data_args, hyper_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    set_seed(training_args.seed)

    vlm = AutoModelForImageTextToText.from_pretrained(model_args.model, dtype=getattr(torch, model_args.dtype))
    processor = AutoProcessor.from_pretrained(model_args.model)
    config = peft_hyper.HyperLoraConfig(
        r=model_args.r,
        latent_dim=model_args.latent_dim,
        num_latents=model_args.num_latents,
        num_blocks=model_args.num_blocks,
        num_heads=model_args.num_heads,
        head_dim=model_args.head_dim,
        num_frames=model_args.num_frames,
        video_size=model_args.video_size,
    )
    model = get_peft_model(vlm, config)
    model.set_processor(processor)

    train_dataset, eval_dataset = load_datasets(data_args)
    if data_args.teacher_targets:
        cache_dir = os.path.join(training_args.output_dir, "teacher_targets")
        with training_args.main_process_first(desc="teacher targets"):
            train_dataset = cache_teacher_targets(
                model, train_dataset, max_new_tokens=data_args.teacher_max_new_tokens, cache_dir=cache_dir
            )

    trainer = HyperLoraTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        objective=hyper_args.objective,
        kl_top_k=hyper_args.kl_top_k,
        kl_temperature=hyper_args.kl_temperature,
        l1_penalty=hyper_args.l1_penalty,
        on_bad_row=data_args.on_bad_row,
    )
    resume = training_args.resume_from_checkpoint
    if resume in ("True", "true", "last"):
        resume = True
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if eval_dataset is not None:
        trainer.save_metrics("eval", trainer.evaluate())
    if hyper_args.weights_digest_dir:
        os.makedirs(hyper_args.weights_digest_dir, exist_ok=True)
        path = os.path.join(hyper_args.weights_digest_dir, f"rank{training_args.process_index}.json")
        with open(path, "w") as f:
            json.dump({"rank": training_args.process_index, "world_size": training_args.world_size,
                       "sha256": hypernetwork_digest(model), "global_step": trainer.state.global_step}, f)  # fmt: skip
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=data_args.dataset_name)


if __name__ == "__main__":
    main()
