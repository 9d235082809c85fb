"""`HyperLoraTrainer`: train a Frames2LoRA hypernetwork with `transformers.Trainer`, and teacher-target caching.

Only the hypernetwork trains; the video-language model stays frozen. Per batch the hypernetwork reads each distinct
video once (one no-grad VLM forward) and emits a LoRA adapter per video, shared by the rows about it
(`rows_per_video` puts rows of a video in the same batch); the student is the frozen VLM with that adapter applied and
**no video** in its context. Objectives:

- `"ce"`: teacher-forced cross-entropy on the target answer (e.g. cached teacher answers);
- `"kl"`: KL(teacher ‖ student) over the answer tokens, the teacher being the same frozen VLM *with* the video in
  context (full vocabulary, or the teacher's top-K tokens renormalised);
- `"ce+kl"`: their sum; plus an optional L1 penalty on the generated LoRA weights.

With `segment_frames`, training goes through composition: each video is cut into segments, the hypernetwork emits one
adapter per segment (all segments of a batch in one forward), and the student answers with the segments' adapters
composed in rank space (`composition.compose_factors`, what `generate_adapter(..., segment_frames=)` does at inference),
so that adapters learn to compose rather than being composed untrained.

Checkpoints are PEFT `save_pretrained` directories (safetensors). A checkpoint counts as complete only once
`checkpoint_complete.json` is written into it (atomically, after every rank finished writing and its files are
fsynced); `resume_from_checkpoint=True` only picks complete checkpoints (transformers writes checkpoints in place, so a
process killed mid-save leaves a partial `checkpoint-N` that stock `get_last_checkpoint` would pick). The model files
of every save (checkpoint or final) are staged and moved in with the weights last (`saving.staged_files`), so a killed
`save_model` leaves the previous model or no weights file, never a truncated one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from .composition import compose_factors
from .data import IGNORE_INDEX, LOSS_WEIGHT_COLUMN, VideoGroupedSampler, VideoTextCollator, validate_dataset, video_key
from .errors import InvalidRowError
from .model import HyperLoraModel
from .model_card import render_model_card
from .saving import atomic_directory, atomic_write_text, fsync_tree, remove_stale, staged_files

logger = logging.get_logger(__name__)

__all__ = [
    "CHECKPOINT_COMPLETE_NAME",
    "HyperLoraTrainer",
    "cache_teacher_targets",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
]

Objective = Literal["ce", "kl", "ce+kl"]
OBJECTIVES: tuple[str, ...] = ("ce", "kl", "ce+kl")
CHECKPOINT_COMPLETE_NAME = "checkpoint_complete.json"


# ---------------------------------------------------------------------------------------------------------- checkpoints
def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a checkpoint directory that `HyperLoraTrainer` finished writing."""
    return os.path.isfile(os.path.join(path, CHECKPOINT_COMPLETE_NAME))


def _checkpoint_dirs(folder: str | os.PathLike) -> list[tuple[int, str]]:
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        prefix, _, step = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and os.path.isdir(os.path.join(folder, name)):
            found.append((int(step), os.path.join(folder, name)))
    return sorted(found)


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The `checkpoint-N` directory of `folder` with the highest `N` among complete ones, or None."""
    complete = [path for _, path in _checkpoint_dirs(folder) if is_complete_checkpoint(path)]
    return complete[-1] if complete else None


# ---------------------------------------------------------------------------------------------------------- losses
def _answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """`(B, S - 1)` bool: which next-token positions predict an answer token."""
    return labels[:, 1:] != IGNORE_INDEX


def _answer_logits(
    logits: torch.Tensor, labels: torch.Tensor, answer_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `(N, V)` predicting each answer token and those tokens `(N,)`, in row-major order (`answer_mask`:
    `_answer_mask(labels)`, when already computed)."""
    mask = _answer_mask(labels) if answer_mask is None else answer_mask
    return logits[:, :-1][mask], labels[:, 1:][mask]


def _answer_token_weights(row_weights: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Each row's weight `(B,)` repeated for its answer tokens (`answer_mask` `(B, S - 1)`) → `(N,)`, in
    `_answer_logits`' order."""
    return row_weights[:, None].expand_as(answer_mask)[answer_mask]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` `(N,)`, weighted by `weights` `(N,)` when given (0 when every weight is 0)."""
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=torch.finfo(values.dtype).tiny)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    top_k: int | None = None,
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student) at `temperature` (scaled by `temperature**2`).

    With `top_k`, the teacher distribution is its top-K tokens renormalised, compared with the student's full-vocabulary
    log-probabilities at those tokens (the Doc-to-LoRA recipe). Inputs are `(N, V)`; `weights` `(N,)` makes the mean
    a weighted one.
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_logits = teacher_logits.float() / temperature
    if top_k is not None:
        values, indices = teacher_logits.topk(min(top_k, teacher_logits.shape[-1]), dim=-1)
        teacher = F.log_softmax(values, dim=-1)
        student = student.gather(-1, indices)
    else:
        teacher = F.log_softmax(teacher_logits, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=-1)
    return _weighted_mean(kl, weights) * temperature**2


# ---------------------------------------------------------------------------------------------------------- trainer
class HyperLoraTrainer(Trainer):
    """
    `transformers.Trainer` for a Frames2LoRA hypernetwork (a `PeftModel` around a [`HyperLoraModel`]).

    Args:
        model: `get_peft_model(vlm, HyperLoraConfig(...))` or a `PeftModel` loaded with `is_trainable=True`.
        args: `TrainingArguments`; `remove_unused_columns` is set to False (the collator needs the video column).
        data_collator: defaults to [`VideoTextCollator.from_model`] (with teacher inputs for KL objectives).
        train_dataset / eval_dataset: rows `{"video", "prompt", "target"}`, optionally a `loss_weight` per row (its
            answer tokens' weight in the loss, e.g. to up-weight a question kind); validated before training.
        objective: `"ce"`, `"kl"` or `"ce+kl"`.
        kl_top_k: distil from the teacher's top-K tokens only (`None`: the full vocabulary).
        kl_temperature: softmax temperature of the KL term.
        l1_penalty: weight of the mean absolute value of the generated LoRA A and B factors.
        on_bad_row: `"skip"` (warn and count) or `"raise"` for rows whose video cannot be loaded.
        rows_per_video: shuffle training rows so that up to this many rows about the same video are adjacent (see
            [`VideoGroupedSampler`]): a batch's rows then share their video's hypernetwork forward. `None` shuffles
            rows independently. Needs a `datasets.Dataset` or list of rows with a `video` column.
        segment_frames: train through composed adapters: each video (sampled at `num_frames`) is cut into segments
            of this many frames and the loss is that of the segments' adapters composed (see the module docstring).
            Sets the default collator's `segment_frames`; a collator passed in must have the same.
        num_frames: frames the default collator samples per video (default: the hypernetwork's `num_frames`), e.g.
            192 for long videos in segments of 12.
        kwargs: the remaining `Trainer` arguments (`callbacks`, `optimizers`, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        objective: Objective = "ce",
        kl_top_k: int | None = None,
        kl_temperature: float = 1.0,
        l1_penalty: float = 0.0,
        on_bad_row: Literal["skip", "raise"] = "skip",
        rows_per_video: int | None = None,
        segment_frames: int | None = None,
        num_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        if rows_per_video is not None and rows_per_video < 1:
            raise ValueError(f"rows_per_video must be a positive integer or None, got {rows_per_video}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if kl_top_k is not None and kl_top_k < 1:
            raise ValueError(f"kl_top_k must be a positive integer or None, got {kl_top_k}.")
        if kl_temperature <= 0:
            raise ValueError(f"kl_temperature must be > 0, got {kl_temperature}.")
        if l1_penalty < 0:
            raise ValueError(f"l1_penalty must be >= 0, got {l1_penalty}.")
        if not isinstance(getattr(model, "base_model", None), HyperLoraModel):
            raise TypeError(
                "HyperLoraTrainer trains a PeftModel around a HyperLoraModel: pass "
                "`get_peft_model(vlm, HyperLoraConfig(...))`."
            )
        if train_dataset is not None:
            validate_dataset(train_dataset, "train_dataset")
        if eval_dataset is not None:
            for name, dataset in eval_dataset.items() if isinstance(eval_dataset, dict) else [("", eval_dataset)]:
                validate_dataset(dataset, f"eval_dataset{'[' + repr(name) + ']' if name else ''}")
        if args is None:
            args = TrainingArguments(output_dir="trainer_output")
        if args.remove_unused_columns:
            logger.info("HyperLoraTrainer sets remove_unused_columns=False: the collator reads the video column.")
            args.remove_unused_columns = False
        args.label_names = ["labels"]
        self.objective = objective
        self.kl_top_k = kl_top_k
        self.kl_temperature = kl_temperature
        self.l1_penalty = l1_penalty
        self.rows_per_video = rows_per_video
        self._freeze_base_model(model)
        if data_collator is None:
            data_collator = VideoTextCollator.from_model(
                model,
                num_frames=num_frames,
                with_teacher=objective != "ce",
                on_bad_row=on_bad_row,
                segment_frames=segment_frames,
            )
        elif segment_frames is not None and getattr(data_collator, "segment_frames", None) != segment_frames:
            raise ValueError(
                f"segment_frames={segment_frames!r} but the data collator cuts videos into segments of "
                f"{getattr(data_collator, 'segment_frames', None)!r} frames; pass the same to both (or leave out "
                "data_collator)."
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        # compute_loss returns a per-batch mean; Trainer divides it by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_counts: dict[str, int] = defaultdict(int)
        self.num_skipped_rows = 0

    # ------------------------------------------------------------------ model
    @staticmethod
    def _freeze_base_model(model: nn.Module) -> None:
        unfrozen = [n for n, p in model.named_parameters() if p.requires_grad and ".hypernetworks." not in n]
        if unfrozen:
            logger.warning(f"Freezing {len(unfrozen)} non-hypernetwork parameters (e.g. {unfrozen[0]}).")
            for name, param in model.named_parameters():
                if ".hypernetworks." not in name:
                    param.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "The hypernetwork has no trainable parameters: load the checkpoint with "
                "`PeftModel.from_pretrained(vlm, path, is_trainable=True)`."
            )

    def _tuner(self, model: nn.Module) -> HyperLoraModel:
        return self.accelerator.unwrap_model(model).base_model

    # ------------------------------------------------------------------ data
    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.rows_per_video is None or train_dataset is None:
            return super()._get_train_sampler(train_dataset)
        videos = (
            train_dataset["video"] if hasattr(train_dataset, "column_names") else [r["video"] for r in train_dataset]
        )
        return VideoGroupedSampler([video_key(v) for v in videos], self.rows_per_video, seed=self.args.seed)

    # ------------------------------------------------------------------ loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The objective's loss for one batch from [`VideoTextCollator`]: the mean over answer tokens, weighted by
        each row's `loss_weight` when the rows carry one.

        `num_items_in_batch` is accepted for API compatibility; the loss is a per-batch mean.
        """
        inputs = dict(inputs)
        skipped = int(inputs.pop("num_skipped", 0) or 0)
        inputs.pop("row_ids", None)
        video_index = inputs.pop("video_index", None)
        segment_video = inputs.pop("segment_video", None)
        time_spans = inputs.pop("video_time_spans", None)
        row_weights = inputs.pop("loss_weights", None)
        if skipped and model.training:
            self.num_skipped_rows += skipped
            self._metric_sums["skipped_rows"] += skipped
            self._metric_counts["skipped_rows"] = 1
        tuner = self._tuner(model)
        tuner.model.eval()  # the frozen VLM never runs in train mode (dropout); the hypernetwork does
        trainable = [p for p in tuner.hypernetwork.parameters() if p.requires_grad]
        if inputs["input_ids"].shape[0] == 0:  # every row of the batch was skipped
            loss = sum(p.sum() for p in trainable) * 0.0
            return (loss, None) if return_outputs else loss

        hyper_inputs = {key.removeprefix("hyper_"): v for key, v in inputs.items() if key.startswith("hyper_")}
        factors = tuner.generate_lora_factors(hyper_inputs, grad=torch.is_grad_enabled(), time_spans=time_spans)
        if segment_video is not None:  # one adapter per segment → one composed adapter per video
            config = tuner.hyper_config
            factors = compose_factors(factors, segment_video, config.bias_rank, config.segment_scaling)
        if video_index is not None:  # one adapter per distinct video → one per row
            factors = {name: (a[video_index], b[video_index]) for name, (a, b) in factors.items()}
        with tuner.lora_factors_applied(factors):
            # Through `model` (possibly DDP-wrapped) so that distributed gradient synchronisation is set up.
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        answer_mask = _answer_mask(inputs["labels"])
        student_logits, answer_tokens = _answer_logits(outputs.logits, inputs["labels"], answer_mask)
        token_weights = None if row_weights is None else _answer_token_weights(row_weights, answer_mask)

        terms: dict[str, torch.Tensor] = {}
        if self.objective in ("ce", "ce+kl"):
            ce = F.cross_entropy(student_logits.float(), answer_tokens, reduction="none")
            terms["ce"] = _weighted_mean(ce, token_weights)
        if self.objective in ("kl", "ce+kl"):
            if "teacher_input_ids" not in inputs:
                raise ValueError(
                    f"objective={self.objective!r} needs teacher inputs: use a VideoTextCollator with with_teacher=True."
                )
            teacher = {key.removeprefix("teacher_"): v for key, v in inputs.items() if key.startswith("teacher_")}
            teacher_labels = teacher.pop("labels")
            with torch.no_grad():
                teacher_logits = tuner.model(**teacher, use_cache=False).logits
            teacher_logits, teacher_tokens = _answer_logits(teacher_logits, teacher_labels)
            if not torch.equal(teacher_tokens, answer_tokens):
                raise RuntimeError("Teacher and student answer tokens differ; they must be the same sequence.")
            terms["kl"] = distillation_loss(
                student_logits, teacher_logits, self.kl_top_k, self.kl_temperature, weights=token_weights
            )
        loss = sum(terms.values())
        if self.l1_penalty:
            l1 = sum(a.abs().mean() + b.abs().mean() for a, b in factors.values()) / len(factors)
            terms["l1"] = l1
            loss = loss + self.l1_penalty * l1

        prefix = "" if model.training else "eval_"
        for name, value in terms.items():
            self._metric_sums[prefix + name] += float(value.detach())
            self._metric_counts[prefix + name] += 1
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Evaluation computes the training objective only (no logits are gathered)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _metric_names(self, prefix: str) -> list[str]:
        names = [n for n in ("ce", "kl") if n in self.objective]
        if self.l1_penalty:
            names.append("l1")
        return [prefix + n for n in names] + ([] if prefix else ["skipped_rows"])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (`ce`, `kl`, `l1`, or `eval_*`; averaged over processes)
        and the number of skipped rows (summed over processes)."""
        names = self._metric_names("eval_" if any(key.startswith("eval_") for key in logs) else "")
        if "loss" in logs or "eval_loss" in logs:
            values = torch.tensor(
                [self._metric_sums.pop(n, 0.0) / max(self._metric_counts.pop(n, 0), 1) for n in names],
                dtype=torch.float64,
                device=self.args.device,
            )
            if self.accelerator.num_processes > 1:
                values = self.accelerator.reduce(values, reduction="sum")
                skipped = names.index("skipped_rows") if "skipped_rows" in names else None
                for i in range(len(names)):
                    if i != skipped:
                        values[i] /= self.accelerator.num_processes
            logs.update({n: float(v) for n, v in zip(names, values.tolist(), strict=True)})
        super().log(logs, start_time)

    # ------------------------------------------------------------------ datasets
    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        return dataset  # the collator needs `video`, `prompt`, `target` and `id`

    # ------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`Trainer._save` (model, processor, training arguments) into a staging directory inside `output_dir`, then
        moved in with the weights last: a kill leaves the previous model files or no weights file, never a truncated
        one (`saving.staged_files`). `README.md` is carried into the staging directory so that PEFT updates it."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return super()._save(output_dir, state_dict)
        weights = (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)
        with staged_files(output_dir, commit_last=weights, carry=["README.md"]) as staging:
            super()._save(str(staging), state_dict)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Save as Trainer does, then mark the checkpoint complete (after all ranks wrote and its files are on disk),
        then rotate."""
        run_dir = self._get_output_dir(trial=trial)
        output_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        marker = os.path.join(output_dir, CHECKPOINT_COMPLETE_NAME)
        if self.args.should_save and os.path.exists(marker):
            os.remove(marker)  # being rewritten: incomplete until this save finishes
            fsync_tree(output_dir)  # the removal reaches the disk before any rewritten file
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once the new checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            fsync_tree(output_dir)  # every rank's files are on disk before the marker vouches for them
            atomic_write_text(marker, json.dumps({"global_step": self.state.global_step, "time": time.time()}))
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | bool | None:
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"No complete checkpoint found in output directory ({self.args.output_dir}).")
            if self.args.should_save:
                for _, path in _checkpoint_dirs(self.args.output_dir):
                    if not is_complete_checkpoint(path):
                        aside = f"{path}.incomplete"
                        logger.warning(f"Ignoring partially written checkpoint {path}; moved to {aside}.")
                        shutil.rmtree(aside, ignore_errors=True)
                        os.replace(path, aside)
            return found
        if isinstance(resume_from_checkpoint, (str, os.PathLike)) and not is_complete_checkpoint(
            resume_from_checkpoint
        ):
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete HyperLoraTrainer checkpoint (no "
                f"{CHECKPOINT_COMPLETE_NAME}); it was probably interrupted while being written. Resume from an earlier "
                "checkpoint or pass resume_from_checkpoint=True to pick the last complete one."
            )
        return resume_from_checkpoint

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        """`Trainer.train`; `resume_from_checkpoint=True` resumes from the last *complete* checkpoint."""
        return super().train(
            resume_from_checkpoint=self._resolve_checkpoint(resume_from_checkpoint), trial=trial, **kwargs
        )

    # ------------------------------------------------------------------ hub
    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | Sequence[str] | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `templates/model_card.md` for this run into `output_dir/README.md`; returns the card text."""
        if not self.is_world_process_zero():
            return ""
        peft_model = self.accelerator.unwrap_model(self.model)
        config = peft_model.base_model.hyper_config
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id or Path(self.args.output_dir).name
        datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
        card = render_model_card(
            config,
            repo_id=repo_id,
            model_name=model_name,
            datasets=datasets,
            tags=[tags] if isinstance(tags, str) else list(tags or []),
            training_data=self._describe_training_data(datasets),
            objective=self.objective,
            hyperparameters=self._hyperparameters(),
            metrics=self._final_metrics(),
        )
        text = str(card)
        atomic_write_text(os.path.join(self.args.output_dir, "README.md"), text)
        return text

    def _describe_training_data(self, datasets: list[str]) -> str:
        dataset = self.train_dataset
        parts = []
        if datasets:
            parts.append("Dataset(s): " + ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets))
        if dataset is not None and hasattr(dataset, "__len__"):
            parts.append(f"{len(dataset)} training rows (video, prompt, target).")
            columns = dataset.column_names or []
            tasks = [str(task) for task in dataset["task_type"]] if "task_type" in columns else None
            if tasks is not None:
                counts = Counter(tasks)
                parts.append("Task types: " + ", ".join(f"{k} ({v})" for k, v in sorted(counts.items())) + ".")
            if LOSS_WEIGHT_COLUMN in columns:
                weights: dict[str, list[float]] = defaultdict(list)
                for group, weight in zip(
                    tasks or ["all rows"] * len(dataset), dataset[LOSS_WEIGHT_COLUMN], strict=True
                ):
                    weights[group].append(float(weight))
                parts.append(
                    "Loss weight per row (mean): "
                    + ", ".join(f"{k} {sum(v) / len(v):g}" for k, v in sorted(weights.items()))
                    + "."
                )
        if self.eval_dataset is not None and hasattr(self.eval_dataset, "__len__"):
            parts.append(f"{len(self.eval_dataset)} evaluation rows.")
        if self.num_skipped_rows:
            parts.append(f"{self.num_skipped_rows} rows were skipped (unreadable video or missing fields).")
        return "\n".join(f"- {p}" for p in parts) if parts else "Not recorded."

    def _hyperparameters(self) -> dict[str, Any]:
        args = self.args
        values: dict[str, Any] = {
            "objective": self.objective,
            "kl_top_k": self.kl_top_k,
            "kl_temperature": self.kl_temperature,
            "l1_penalty": self.l1_penalty,
            "learning_rate": args.learning_rate,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": args.world_size,
            "optimizer": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "seed": args.seed,
            "global_step": self.state.global_step,
            "epochs": round(self.state.epoch or 0.0, 4),
        }
        return {k: f"`{v}`" for k, v in values.items()}

    def _final_metrics(self) -> dict[str, str]:
        metrics: dict[str, str] = {}
        for entry in self.state.log_history:
            for key, value in entry.items():
                wanted = key in ("loss", "ce", "kl", "l1", "train_loss") or key.startswith("eval_")
                if wanted and isinstance(value, (int, float)) and not key.endswith(("_runtime", "_per_second")):
                    metrics[key] = f"{value:.4g}"
        return metrics

    def _hub_files(self) -> list[str]:
        """The files `push_to_hub` uploads: the hypernetwork checkpoint, its config, the processor and the card."""
        files = ["adapter_config.json", "adapter_model.safetensors", "README.md"]
        processor = self._tuner(self.model).processor
        with tempfile.TemporaryDirectory() as tmp:
            processor.save_pretrained(tmp)
            files += sorted(name for name in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, name)))
        return list(dict.fromkeys(files))

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Upload the hypernetwork checkpoint (safetensors + adapter_config.json), the processor and a model card to
        `args.hub_model_id` (created if needed). `kwargs` go to [`create_model_card`] (e.g. `dataset_name`)."""
        from huggingface_hub import HfApi

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if getattr(self, "hub_model_id", None) is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        self._finish_current_push()
        return HfApi(library_name="peft-hyper").upload_folder(
            repo_id=self.hub_model_id,
            folder_path=self.args.output_dir,
            commit_message=commit_message,
            token=token,
            run_as_future=not blocking,
            allow_patterns=self._hub_files(),
            revision=revision if revision is not None else self.args.hub_revision,
        )


# ---------------------------------------------------------------------------------------------------------- teacher
def cache_teacher_targets(
    model: nn.Module,
    dataset: Any,
    max_new_tokens: int = 64,
    cache_dir: str | os.PathLike = "teacher_targets",
    batch_size: int = 8,
    on_bad_row: Literal["skip", "raise"] = "skip",
    progress: bool = True,
) -> Any:
    """Answer each row's prompt with the frozen VLM *with the video in context* (adapters disabled, greedy) and
    return `dataset` with those answers as `target` (a previous `target` column is kept as `reference_target`).

    Results are written to `cache_dir` in shards as they are produced, so an interrupted run resumes where it stopped
    (rows already answered are not regenerated). Rows whose video cannot be read are skipped with a warning (or raise,
    with `on_bad_row="raise"`) and left out of the result. The result is also saved to `cache_dir/dataset`
    (`datasets.load_from_disk`).
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    validate_dataset(dataset, "dataset", require_target=False)
    if not isinstance(dataset, Dataset):
        raise TypeError("cache_teacher_targets needs a map-style `datasets.Dataset`.")
    tuner: HyperLoraModel = model if isinstance(model, HyperLoraModel) else model.base_model
    collator = VideoTextCollator.from_model(tuner, with_target=False, on_bad_row=on_bad_row)
    cache = Path(cache_dir)
    shards = cache / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    remove_stale(shards)  # shards are written below without a scan each
    meta = {"fingerprint": dataset._fingerprint, "num_rows": len(dataset), "max_new_tokens": max_new_tokens}
    meta_path = cache / "meta.json"
    if meta_path.exists():
        previous = json.loads(meta_path.read_text())
        if previous != meta:
            raise ValueError(
                f"{cache} holds teacher targets of another dataset or setting ({previous} vs {meta}); use a new "
                "cache_dir or delete it."
            )
    else:
        atomic_write_text(meta_path, json.dumps(meta))

    results: dict[int, str | None] = {}
    for shard in sorted(shards.glob("shard-*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            results[record["index"]] = record["target"]
    todo = [i for i in range(len(dataset)) if i not in results]
    vlm = tuner.model
    was_training = vlm.training
    vlm.eval()
    bar = tqdm(total=len(dataset), initial=len(dataset) - len(todo), desc="Teacher targets", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            indices = todo[start : start + batch_size]
            rows = [dataset[i] for i in indices]
            answers: list[str | None] = [None] * len(rows)
            usable = []
            loaded_videos: dict[str, Any] = {}  # rows about the same video decode it once
            for position, row in enumerate(rows):
                try:
                    loaded = collator._load_row(
                        {**row, "id": row.get("id") or f"index {indices[position]}"}, position, loaded_videos
                    )
                except InvalidRowError as exc:
                    if on_bad_row == "raise":
                        raise
                    logger.warning(f"Skipping a bad row in teacher caching: {exc}")
                    continue
                usable.append((position, loaded))
            if usable:
                videos, prompts = [row.video for _, row in usable], [row.prompt for _, row in usable]
                texts = tuner.answer(prompts, videos=videos, max_new_tokens=max_new_tokens)
                for (position, _), text in zip(usable, texts, strict=True):
                    answers[position] = text
            lines = [json.dumps({"index": i, "target": a}) for i, a in zip(indices, answers, strict=True)]
            atomic_write_text(shards / f"shard-{indices[0]:09d}.jsonl", "\n".join(lines) + "\n", clean=False)
            results.update(zip(indices, answers, strict=True))
            bar.update(len(indices))
    finally:
        bar.close()
        vlm.train(was_training)

    kept = [i for i in range(len(dataset)) if results.get(i) is not None]
    skipped = len(dataset) - len(kept)
    if skipped:
        logger.warning(f"Teacher caching skipped {skipped} row(s) with unreadable videos.")
    out = dataset.select(kept)
    if "target" in out.column_names:
        if "reference_target" in out.column_names:
            out = out.remove_columns("reference_target")
        out = out.rename_column("target", "reference_target")
    out = out.add_column("target", [results[i] for i in kept])
    with atomic_directory(cache / "dataset") as staging:
        out.save_to_disk(str(staging))
    return out
