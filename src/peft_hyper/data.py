"""Training data for Frames2LoRA: JSONL manifests, dataset checks and the collator that feeds `HyperLoraTrainer`.

A training row is `{"video": <path | bytes>, "prompt": str, "target": str}` (plus optional `id`, `task_type`). The
collator decodes each row's video lazily with [`load_video`] and builds, per batch:

- the hypernetwork's inputs (`hyper_*`): each *distinct* video of the batch once, followed by the internalisation
  prompt, exactly as `HyperLoraModel.video_inputs` formats them at inference, and `video_index` `(B,)` saying which
  of those videos each row asks about (rows about the same video share one hypernetwork forward);
- with `segment_frames`, each distinct video cut into consecutive segments instead (`split_video`: each segment's
  prompt carries its frames' times in the whole video), and `segment_video` `(N,)` saying which video each segment
  belongs to: the trainer composes the segments' adapters per video and trains through the composition;
- `video_time_spans` `(N, 2)`: the first and last frame times, in seconds, of each video (or segment) the hypernetwork
  reads, for a hypernetwork with `time_encoding`;
- the student's text-only inputs (`input_ids`, `attention_mask`, `labels`): the chat-formatted prompt followed by
  the target answer, with the prompt (and padding) masked to -100 in `labels` — no video in the student's context;
- optionally the teacher's inputs (`teacher_*`): the video, the prompt and the same answer tokens, so that the
  teacher's and the student's logits over the answer line up token for token (for the KL objectives).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from .errors import DatasetValidationError, InvalidRowError, InvalidSamplingError, ManifestError, PeftHyperError
from .inputs import (
    HypernetworkInputSpec,
    build_hypernetwork_inputs,
    build_video_inputs,
    text_prompt,
    video_time_spans,
)
from .model import HyperLoraModel
from .video import Video, load_video, split_video

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_FIELDS",
    "DatasetValidationError",
    "InvalidRowError",
    "ManifestError",
    "VideoGroupedSampler",
    "VideoTextCollator",
    "load_manifest",
    "validate_dataset",
    "video_key",
]

# Reference (Frames2LoRA) manifest field → dataset column.
MANIFEST_FIELDS: dict[str, str] = {
    "id": "id",
    "video_path": "video",
    "prompt": "prompt",
    "task_type": "task_type",
    "target_text": "target",
}
REQUIRED_COLUMNS: tuple[str, ...] = ("video", "prompt", "target")
# Optional column: a row's weight in the training loss (answer tokens are averaged with these weights; default 1).
LOSS_WEIGHT_COLUMN = "loss_weight"
IGNORE_INDEX = -100
# Errors that mean "this row's video cannot be used" (the loader's typed errors, plus what FFmpeg/IO may raise).
_BAD_VIDEO_ERRORS = (PeftHyperError, OSError, RuntimeError, ValueError, TypeError)


def video_key(source: Any) -> str | None:
    """What identifies a row's video within a dataset: its path (a string, a `PathLike` or a `datasets.Video` dict's
    path), or a digest of its bytes. `None` when the row has no video or holds decoded frames."""
    if isinstance(source, dict):  # a `datasets.Video(decode=False)` value
        source = source.get("path") or source.get("bytes")
    if isinstance(source, str | os.PathLike):
        return f"path:{os.fspath(source)}"
    if isinstance(source, bytes | bytearray):
        return f"sha1:{hashlib.sha1(source).hexdigest()}"
    return None


def looks_like_local_path(data: str) -> bool:
    """Whether a `--data` string that does not exist was meant as a local path rather than a Hub dataset name
    (`name` or `owner/name`): it starts with `.`, `/` or `~`, has more than one separator or a file suffix."""
    suffix = Path(data).suffix[1:]
    return data.startswith((".", "/", "~")) or "\\" in data or data.count("/") > 1 or suffix.isalpha()


# ---------------------------------------------------------------------------------------------------------- manifests
def load_manifest(path: str | os.PathLike, video_root: str | os.PathLike | None = None):
    """Load a reference-format JSONL manifest (`{id, video_path, prompt, task_type, target_text}` per line) as a
    `datasets.Dataset` with columns `video, prompt, target, id, task_type`.

    Relative `video_path`s are resolved against `video_root`, or the manifest's own directory when it is `None`.
    Blank lines are skipped; a malformed line raises [`ManifestError`] naming the file and line number.
    """
    from datasets import Dataset, Features, Value

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"No manifest file at '{path}'.")
    root = Path(video_root) if video_root is not None else path.parent
    columns: dict[str, list[str | None]] = {column: [] for column in MANIFEST_FIELDS.values()}
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}).") from exc
            if not isinstance(record, dict):
                raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}.")
            missing = [key for key in ("video_path", "prompt", "target_text") if record.get(key) is None]
            if missing:
                raise ManifestError(
                    f"{where}: missing field(s) {missing}; each line needs "
                    "{id, video_path, prompt, task_type, target_text}."
                )
            for key in MANIFEST_FIELDS:
                value = record.get(key)
                if value is not None and not isinstance(value, str):
                    raise ManifestError(f"{where}: field '{key}' must be a string, got {type(value).__name__}.")
            video = Path(record["video_path"])
            if not video.is_absolute():
                video = root / video
            row_id = record.get("id") or f"{path.name}:{line_number}"
            columns["id"].append(row_id)
            columns["video"].append(str(video))
            columns["prompt"].append(record["prompt"])
            columns["task_type"].append(record.get("task_type"))
            columns["target"].append(record["target_text"])
    features = Features({column: Value("string") for column in ("video", "prompt", "target", "id", "task_type")})
    return Dataset.from_dict({c: columns[c] for c in features}, features=features)


def validate_dataset(dataset: Any, name: str = "train_dataset", require_target: bool = True) -> None:
    """Check, before any training step, that `dataset` can feed a [`VideoTextCollator`].

    Raises [`DatasetValidationError`] for an empty dataset, a missing `video`/`prompt`/`target` column, a column of
    the wrong type (`prompt`/`target` must be strings; `video` a path string, bytes, or a `datasets.Video` feature;
    an optional `loss_weight` numbers) or null prompts/targets.
    """
    from datasets import Dataset, IterableDataset, Value
    from datasets import Video as VideoFeature

    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise DatasetValidationError(
            f"{name} must be a `datasets.Dataset` (or IterableDataset), got {type(dataset).__name__}. Build one with "
            "`Dataset.from_list([...])` or `peft_hyper.load_manifest(path)`."
        )
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise DatasetValidationError(f"{name} is empty: it has no rows to train on.")
    features = dataset.features
    required = REQUIRED_COLUMNS if require_target else ("video", "prompt")
    if features is None:
        return  # an IterableDataset of unknown schema: rows are checked as they are collated
    missing = [column for column in required if column not in features]
    if missing:
        raise DatasetValidationError(
            f"{name} lacks column(s) {missing} (has {sorted(features)}). Rename yours with "
            "`dataset.rename_column(old, new)`; a reference manifest loads with `load_manifest`."
        )
    text_types = ("string", "large_string")
    for column in required[1:]:
        feature = features[column]
        if not (isinstance(feature, Value) and feature.dtype in text_types):
            raise DatasetValidationError(f"{name} column '{column}' must hold strings, got feature {feature}.")
    video = features["video"]
    if not (isinstance(video, VideoFeature) or (isinstance(video, Value) and video.dtype in (*text_types, "binary"))):
        raise DatasetValidationError(
            f"{name} column 'video' must hold file paths (string), video bytes (binary) or be a `datasets.Video` "
            f"feature, got {video}."
        )
    if isinstance(video, VideoFeature) and video.decode:
        raise DatasetValidationError(
            f"{name} column 'video' is a decoding `datasets.Video` feature; the collator decodes videos itself. Use "
            "`dataset = dataset.cast_column('video', datasets.Video(decode=False))`."
        )
    weight = features.get(LOSS_WEIGHT_COLUMN)
    if weight is not None and not (isinstance(weight, Value) and weight.dtype.startswith(("float", "int", "uint"))):
        raise DatasetValidationError(
            f"{name} column '{LOSS_WEIGHT_COLUMN}' must hold numbers (a row's weight in the loss), got {weight}."
        )
    if isinstance(dataset, Dataset):
        table = dataset.data
        for column in required:
            nulls = table.column(column).null_count
            if nulls:
                raise DatasetValidationError(
                    f"{name} column '{column}' has {nulls} null value(s); drop or fill those rows first "
                    f"(e.g. `dataset.filter(lambda row: row['{column}'] is not None)`)."
                )


# ---------------------------------------------------------------------------------------------------------- sampler
class VideoGroupedSampler(torch.utils.data.Sampler[int]):
    """Shuffled row order in which up to `rows_per_video` rows about the same video sit next to each other.

    Each video's rows are shuffled and cut into groups of `rows_per_video`; the groups of all videos are shuffled
    together. A batch then holds about `batch_size / rows_per_video` videos, and the collator internalizes each once.
    Rows without a video key (see [`video_key`]) form groups of one. The order depends on `seed` and the epoch
    (`set_epoch`, called by `Trainer` at each epoch start).
    """

    def __init__(self, video_keys: Sequence[str | None], rows_per_video: int, seed: int = 0) -> None:
        if rows_per_video < 1:
            raise ValueError(f"rows_per_video must be a positive integer, got {rows_per_video}.")
        self.rows_per_video = rows_per_video
        self.seed = seed
        self.epoch = 0
        rows_of_video: dict[str, list[int]] = {}
        self.rows_by_video: list[list[int]] = []
        for index, key in enumerate(video_keys):
            if key is None:
                self.rows_by_video.append([index])
            else:
                rows_of_video.setdefault(key, []).append(index)
        self.rows_by_video.extend(rows_of_video.values())
        self.num_rows = len(video_keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups: list[list[int]] = []
        for rows in self.rows_by_video:
            shuffled = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
            groups.extend(shuffled[i : i + self.rows_per_video] for i in range(0, len(shuffled), self.rows_per_video))
        for group in torch.randperm(len(groups), generator=generator).tolist():
            yield from groups[group]


# ---------------------------------------------------------------------------------------------------------- collator
class _LoadedRow(NamedTuple):
    video: Video
    prompt: str
    target: str | None
    row_id: str
    loss_weight: float


@dataclass
class VideoTextCollator:
    """Collate rows `{"video", "prompt", "target"[, "id", "loss_weight"]}` into hypernetwork, student and (optionally)
    teacher inputs; with targets, `loss_weights` `(B,)` holds each row's `loss_weight` (1 when absent).

    Args:
        processor: the base model's `SmolVLMProcessor`.
        spec: how videos are sampled and shown to the hypernetwork — the model's `input_spec`
            ([`VideoTextCollator.from_model`] takes it from the model).
        with_teacher: also build `teacher_*` inputs (video + prompt + the same answer tokens), for KL objectives.
        with_target: rows carry a `target` (False builds generation inputs only, for teacher-target caching).
        on_bad_row: `"skip"` drops a row whose video cannot be decoded (or whose prompt/target is missing, or whose
            `loss_weight` is not a finite number >= 0) with a warning and counts it in the batch's `num_skipped`;
            `"raise"` fails at once naming the row.
        max_target_tokens: truncate answers to this many tokens (the end-of-utterance token included).
        segment_frames: cut each video's sampled frames into segments of this many frames for the hypernetwork
            (`spec.num_frames` sets how many frames a video gives, e.g. 192 for 16 segments of 12), and add
            `segment_video`; `None` shows each video whole.
    """

    processor: Any
    spec: HypernetworkInputSpec
    with_teacher: bool = False
    with_target: bool = True
    on_bad_row: Literal["skip", "raise"] = "skip"
    max_target_tokens: int | None = None
    segment_frames: int | None = None
    num_skipped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("skip", "raise"):
            raise ValueError(f"on_bad_row must be 'skip' or 'raise', got {self.on_bad_row!r}.")
        frames = self.segment_frames
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise InvalidSamplingError(f"segment_frames must be a whole number >= 1 or None, got {frames!r}.")

    @classmethod
    def from_model(cls, model: Any, num_frames: int | None = None, **kwargs: Any) -> VideoTextCollator:
        """A collator matching the active hypernetwork of `model` (a `PeftModel` or `HyperLoraModel`); `num_frames`
        overrides how many frames it samples per video (e.g. long videos cut into segments)."""
        tuner = model if isinstance(model, HyperLoraModel) else model.base_model
        spec = tuner.input_spec if num_frames is None else replace(tuner.input_spec, num_frames=num_frames)
        return cls(**{"processor": tuner.processor, "spec": spec, **kwargs})

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    # ------------------------------------------------------------------ rows
    def _row_id(self, row: dict[str, Any], index: int) -> str:
        return str(row.get("id") or f"<row {index} of batch>")

    def _load_row(
        self, row: dict[str, Any], index: int, loaded_videos: dict[str, Video | Exception] | None = None
    ) -> _LoadedRow:
        """The row's video, prompt, target and loss weight; `loaded_videos` (key → video or load error) shares
        decodes of the same video between the rows of a batch."""
        row_id = self._row_id(row, index)
        prompt, target = row.get("prompt"), row.get("target")
        if not isinstance(prompt, str):
            raise InvalidRowError(f"Row {row_id}: 'prompt' must be a string, got {type(prompt).__name__}.")
        if self.with_target and not isinstance(target, str):
            raise InvalidRowError(f"Row {row_id}: 'target' must be a string, got {type(target).__name__}.")
        weight = row.get(LOSS_WEIGHT_COLUMN)
        weight = 1.0 if weight is None else weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise InvalidRowError(
                f"Row {row_id}: '{LOSS_WEIGHT_COLUMN}' must be a finite number >= 0, got {weight!r}."
            )
        source = row.get("video")
        if isinstance(source, dict):  # a `datasets.Video(decode=False)` value
            source = source.get("path") or source.get("bytes")
        if source is None:
            raise InvalidRowError(f"Row {row_id}: no video.")
        key = video_key(source) if loaded_videos is not None else None
        video = loaded_videos.get(key) if key is not None else None
        if video is None:
            try:
                video = load_video(
                    source, num_frames=self.spec.num_frames, fps=self.spec.fps, sampling=self.spec.frame_sampling
                )
            except InvalidSamplingError:
                raise  # a configuration error, not a bad row
            except _BAD_VIDEO_ERRORS as exc:
                video = exc
            if key is not None:
                loaded_videos[key] = video
        if isinstance(video, Exception):
            raise InvalidRowError(f"Row {row_id}: cannot load its video ({video})") from video
        return _LoadedRow(video, prompt, target, row_id, float(weight))

    def _load_rows(self, rows: Sequence[dict[str, Any]]) -> tuple[list[_LoadedRow], int]:
        """Usable rows (rows naming the same video get the same `Video` object) and the number skipped."""
        loaded, skipped = [], 0
        loaded_videos: dict[str, Video | Exception] = {}
        for index, row in enumerate(rows):
            try:
                loaded.append(self._load_row(row, index, loaded_videos))
            except InvalidRowError as exc:
                if self.on_bad_row == "raise":
                    raise
                skipped += 1
                self.num_skipped += 1
                logger.warning(f"Skipping a bad row ({self.num_skipped} skipped so far in this process): {exc}")
        return loaded, skipped

    # ------------------------------------------------------------------ tokens
    def _answer_ids(self, target: str) -> list[int]:
        tokenizer = self.tokenizer
        eos = getattr(tokenizer, "end_of_utterance_token", None) or tokenizer.eos_token or ""
        ids = tokenizer(" " + target.strip() + eos, add_special_tokens=False)["input_ids"]
        if self.max_target_tokens is not None:
            ids = ids[: self.max_target_tokens]
        return ids

    def _student_prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(text_prompt(self.processor, prompt), add_special_tokens=False)["input_ids"]

    def _teacher_prompt(self, video: Video, prompt: str) -> dict[str, torch.Tensor]:
        return build_video_inputs(self.processor, [video], prompt, self.spec.video_size, add_generation_prompt=True)

    def _pad_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _pad_text(
        self, sequences: list[list[int]], prompt_lengths: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad token lists; labels are the tokens after each prompt, -100 elsewhere."""
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), self._pad_id(), dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for i, (sequence, prompt_length) in enumerate(zip(sequences, prompt_lengths, strict=True)):
            input_ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[i, : len(sequence)] = 1
            labels[i, prompt_length : len(sequence)] = input_ids[i, prompt_length : len(sequence)]
        return input_ids, attention_mask, labels

    @staticmethod
    def _pad_frames(parts: list[torch.Tensor]) -> torch.Tensor:
        """Stack `(1, T_i, ...)` tensors along batch, zero-padding frames (SmolVLM drops all-zero frames)."""
        frames = max(p.shape[1] for p in parts)
        out = parts[0].new_zeros((len(parts), frames, *parts[0].shape[2:]))
        for i, part in enumerate(parts):
            out[i, : part.shape[1]] = part[0]
        return out

    # ------------------------------------------------------------------ batch
    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        loaded, skipped = self._load_rows(rows)
        batch: dict[str, Any] = {"num_skipped": skipped, "row_ids": [item.row_id for item in loaded]}
        if not loaded:
            empty = torch.zeros((0, 1), dtype=torch.long)
            batch.update(input_ids=empty, attention_mask=empty.clone(), labels=empty.clone())
            return batch
        videos = [item.video for item in loaded]
        slot_of_video: dict[int, int] = {}  # id(Video) → position among the batch's distinct videos
        video_index = [slot_of_video.setdefault(id(video), len(slot_of_video)) for video in videos]
        distinct = list({id(video): video for video in videos}.values())
        if self.segment_frames is not None:
            segments = [split_video(video, self.segment_frames) for video in distinct]
            distinct = [segment for parts in segments for segment in parts]
            owners = [slot for slot, parts in enumerate(segments) for _ in parts]
            batch["segment_video"] = torch.tensor(owners, dtype=torch.long)
        hyper = build_hypernetwork_inputs(self.processor, distinct, self.spec)
        for key, value in hyper.items():
            batch[f"hyper_{key}"] = value
        batch["video_time_spans"] = video_time_spans(distinct)
        batch["video_index"] = torch.tensor(video_index, dtype=torch.long)

        prompts = [self._student_prompt_ids(item.prompt) for item in loaded]
        if not self.with_target:
            input_ids, attention_mask, _ = self._pad_text(prompts, [len(p) for p in prompts])
            batch.update(input_ids=input_ids, attention_mask=attention_mask)
            return batch
        answers = [self._answer_ids(item.target) for item in loaded]
        input_ids, attention_mask, labels = self._pad_text(
            [p + a for p, a in zip(prompts, answers, strict=True)], [len(p) for p in prompts]
        )
        batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        batch["loss_weights"] = torch.tensor([item.loss_weight for item in loaded], dtype=torch.float32)

        if self.with_teacher:
            teacher_prompts = [self._teacher_prompt(item.video, item.prompt) for item in loaded]
            prompt_ids = [t["input_ids"][0].tolist() for t in teacher_prompts]
            t_ids, t_mask, t_labels = self._pad_text(
                [p + a for p, a in zip(prompt_ids, answers, strict=True)], [len(p) for p in prompt_ids]
            )
            batch.update(teacher_input_ids=t_ids, teacher_attention_mask=t_mask, teacher_labels=t_labels)
            for key in ("pixel_values", "pixel_attention_mask"):
                if key in teacher_prompts[0]:
                    batch[f"teacher_{key}"] = self._pad_frames([t[key] for t in teacher_prompts])
        return batch
