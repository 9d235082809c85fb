"""Internalize a corpus of videos: one plain PEFT LoRA directory per video, and an index.

`internalize_dataset(model, dataset, output_dir)` (and `frames2lora internalize-dataset DATA -o DIR`) writes

    DIR/adapters/<id>/adapter_config.json, adapter_model.safetensors   one per video, written whole or not at all
    DIR/index.jsonl                                                    {"id", "dir", "video", "frames", "seconds", "rank"}
    DIR/failed.jsonl                                                   {"id", "video", "error"} for videos that failed

Several videos go through one VLM and one hypernetwork forward (`batch_size`). Under `accelerate launch` every
process takes its own shard (video `i` goes to process `i % num_processes`), so nothing is written twice; each
process appends what it finished to its own `index-<k>-of-<n>.jsonl` right after the adapter directory is in place,
and the main process merges the shards into `index.jsonl` at the end. A rerun after a kill skips every video whose
directory and index line both exist — a directory is only ever complete (`saving.atomic_directory`), and one that a
kill left without its index line is simply written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .data import looks_like_local_path, video_key
from .errors import EvalDataError, PeftHyperError
from .model import HyperLoraModel
from .saving import atomic_write_text
from .video import Video

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class CorpusResult:
    """What `internalize_dataset` did in this process: ids written, ids skipped as already done, and failures
    (id → the error's message)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    index: Path | None = None


def adapter_dir_name(video_id: str) -> str:
    """A directory name for `video_id`: its safe characters, and a short hash when anything had to be replaced."""
    safe = _SAFE_ID.sub("_", video_id).strip("._") or "video"
    if safe == video_id:
        return safe
    return f"{safe[:80]}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


def load_corpus(data: Any, split: str = "train") -> list[tuple[str, Any]]:
    """`(id, video)` pairs from a JSONL manifest (`video` or `video_path` per line, optional `id`; relative paths are
    relative to the manifest), a saved `datasets` directory, a dataset name, or a `datasets.Dataset` with a `video`
    column. Videos named by several rows are kept once; rows without an `id` are named by their position."""
    import datasets

    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.suffix in (".jsonl", ".json") and path.is_file():
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalDataError(f"{path}:{number}: invalid JSON ({exc.msg}).") from exc
                video = row.get("video", row.get("video_path")) if isinstance(row, dict) else None
                if not isinstance(video, str):
                    raise EvalDataError(f"{path}:{number}: each line needs a `video` (or `video_path`) string.")
                if not Path(video).is_absolute():
                    video = str(path.parent / video)
                rows.append({**row, "video": video})
        elif path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            rows = list(loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded)
        elif path.exists() or looks_like_local_path(str(data)):
            raise EvalDataError(
                f"'{data}' is neither a JSONL manifest (.jsonl) nor a saved dataset directory; pass one (or a Hub "
                "dataset name)."
            )
        else:
            loaded = datasets.load_dataset(str(data), split=split)
            rows = list(loaded)
    else:
        rows = list(data)
    if not rows:
        raise EvalDataError("The corpus is empty; pass at least one video.")
    if "video" not in rows[0]:
        raise EvalDataError(f"The corpus needs a `video` column; it has {sorted(rows[0])}.")
    pairs, seen = [], set()
    for position, row in enumerate(rows):
        key = video_key(row["video"]) or f"row:{position}"
        if key in seen:
            continue
        seen.add(key)
        pairs.append((str(row.get("id") if row.get("id") is not None else position), row["video"]))
    return pairs


def internalize_dataset(
    model: Any,
    data: Any,
    output_dir: str | os.PathLike,
    batch_size: int = 4,
    num_frames: int | None = None,
    segment_frames: int | None = None,
    max_rank: int | None = None,
    split: str = "train",
    process_index: int | None = None,
    num_processes: int | None = None,
    progress: bool = True,
) -> CorpusResult:
    """Internalize every video of `data` (see `load_corpus`) into `output_dir` (see the module docstring).

    `process_index` / `num_processes` default to accelerate's (`PartialState`), 0 / 1 without it. Videos that cannot
    be read are logged, listed in `failed.jsonl` and skipped; the others are still written.
    """
    tuner = model if isinstance(model, HyperLoraModel) else model.base_model
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvalDataError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    if process_index is None or num_processes is None:
        process_index, num_processes = _process_rank()
    pairs = load_corpus(data, split)
    ids = [video_id for video_id, _ in pairs]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise EvalDataError(f"Two different videos have the id '{duplicate}'; ids name the output directories.")
    output = Path(output_dir)
    adapters = output / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    shard = output / f"index-{process_index:05d}-of-{num_processes:05d}.jsonl"
    failed_log = output / ("failed.jsonl" if num_processes == 1 else f"failed-{process_index:05d}.jsonl")
    for log in (shard, failed_log):
        _end_cut_line(log)
    done = {entry["id"] for entry in _read_jsonl(output.glob("index-*-of-*.jsonl"))}
    mine = [pair for position, pair in enumerate(pairs) if position % num_processes == process_index]
    result = CorpusResult()
    todo = []
    for video_id, video in mine:
        if video_id in done and (adapters / adapter_dir_name(video_id) / "adapter_model.safetensors").is_file():
            result.skipped.append(video_id)
        else:
            todo.append((video_id, video))
    bar = tqdm(total=len(mine), initial=len(result.skipped), desc="internalize", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        loaded: list[tuple[str, Any, Video]] = []
        for video_id, video in batch:
            try:
                loaded.append((video_id, video, tuner.load_videos(video, num_frames)[0][0]))
            except PeftHyperError as exc:
                _record_failure(result, failed_log, video_id, video, exc)
        if loaded:
            state_dicts = tuner.generate_adapter(
                [v for _, _, v in loaded], segment_frames=segment_frames, max_rank=max_rank
            )
            for (video_id, video, frames), state_dict in zip(loaded, state_dicts, strict=True):
                directory = adapters / adapter_dir_name(video_id)
                tuner.save_adapter_state_dict(state_dict, directory)
                rank = next(value.shape[0] for key, value in state_dict.items() if ".lora_A." in key)
                entry = {
                    "id": video_id,
                    "dir": str(directory.relative_to(output)),
                    "video": str(video) if isinstance(video, (str, os.PathLike)) else None,
                    "frames": frames.num_frames,
                    "seconds": frames.metadata.duration,
                    "rank": rank,
                }
                _append_line(shard, entry)
                result.written.append(video_id)
        bar.update(len(batch))
    bar.close()
    _wait_for_everyone(num_processes)
    if process_index == 0:
        entries = {entry["id"]: entry for entry in _read_jsonl(output.glob("index-*-of-*.jsonl"))}
        order = {video_id: position for position, video_id in enumerate(ids)}
        merged = sorted(entries.values(), key=lambda entry: order.get(entry["id"], len(order)))
        result.index = atomic_write_text(output / "index.jsonl", "".join(json.dumps(e) + "\n" for e in merged))
    if result.failed:
        logger.warning(f"{len(result.failed)} video(s) failed and were skipped; see {failed_log}.")
    return result


def _record_failure(result: CorpusResult, failed: Path, video_id: str, video: Any, exc: Exception) -> None:
    message = f"{type(exc).__name__}: {exc}"
    logger.warning(f"Skipping video '{video_id}': {message}")
    result.failed[video_id] = message
    video_name = str(video) if isinstance(video, (str, os.PathLike)) else None
    _append_line(failed, {"id": video_id, "video": video_name, "error": message})


def _end_cut_line(path: Path) -> None:
    """End a last line that a kill cut short, so that the next line appended stands on its own (`_read_jsonl` then
    ignores the cut one). Called once per run, before appending."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        cut = f.read(1) != b"\n"
    if cut:
        with path.open("a", encoding="utf-8") as f:
            f.write("\n")


def _append_line(path: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line and make it durable before going on (the index is what marks a video done)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(paths: Sequence[Path] | Any) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(paths):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: its video is not counted as done and is written again
    return entries


def _accelerate_state() -> Any:
    """accelerate's process state. Launched on machines without CUDA, it joins the processes over gloo (accelerate
    picks no backend there and would see one process each)."""
    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return PartialState(backend="gloo")
    return PartialState()


def process_device() -> Any:
    """This process's device under `accelerate launch` (its GPU, e.g. `cuda:3` for the fourth process of a node), or
    the CPU where there is none: where `frames2lora internalize-dataset` puts the model. Uses the same process state
    as the sharding, so asking for the device first does not change how processes join."""
    return _accelerate_state().device


def _process_rank() -> tuple[int, int]:
    state = _accelerate_state()
    return state.process_index, state.num_processes


def _wait_for_everyone(num_processes: int) -> None:
    if num_processes <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # accelerate's wait is a no-op for a gloo group it does not count as distributed
    else:
        _accelerate_state().wait_for_everyone()
