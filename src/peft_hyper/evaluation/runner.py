"""Generation side of `frames2lora eval`: answer every item under every condition, cache predictions, score them and
compare each condition with the video-in-context baseline.

Conditions:
- `in_context`: the frozen base model with the video in context (the baseline);
- `adapter`: the item's internalized adapter, question text-only (zero visual tokens);
- `no_video`: the frozen base model, question text-only;
- `bias_only`: the hypernetwork's input-independent block alone (an adapter from no video);
- `shuffled`: another item's adapter (a video with different content).

Videos are read through a video loader, `(source, num_frames, size) -> Video`: by default [`load_eval_video`] (the
file, resized); [`import_video_loader`] resolves `frames2lora eval --video-loader MODULE:FUNCTION`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import math
import numbers
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import load_manifest, looks_like_local_path, video_key
from ..errors import EvalDataError, EvalDataNotFoundError, OutputPathError, PeftHyperError, UsageError
from ..video import Video, load_video
from .metrics import JudgeFn, available_metrics, load_metric, per_item_scores
from .report import BenchmarkResult, EvaluationResults, ReportFiles, write_report
from .statistics import PairedComparison, paired_comparison

logger = logging.getLogger(__name__)

BASELINE = "in_context"
CONTROLS = ("no_video", "bias_only", "shuffled")
BASE_ONLY_CONDITIONS = (BASELINE, "no_video")  # answered by the base VLM alone
ALL_CONDITIONS = (BASELINE, "adapter", *CONTROLS)

# How `evaluate_adapters` reads an item's video: `(source, num_frames, size) -> Video`, where `source` is the item's
# `spec` when it has one, else its `video`, and `size` the longest edge in px (`None`: as stored).
VideoLoader = Callable[[Any, int, int | None], Video]
# The loader of the synthetic world's `spec` column (in `peft_hyper.testing`, which the runtime does not import).
SPEC_VIDEO_LOADER = "peft_hyper.testing.world:render_spec_video"


@dataclass
class EvalItem:
    """One question about one video. `references` holds every accepted answer; `benchmark` groups items."""

    id: str
    video: Any
    prompt: str
    references: list[str]
    benchmark: str = "default"
    spec: str | None = None  # a synthetic-world clip spec, read by the video loader instead of `video`


@dataclass
class EvaluationRun:
    """What `evaluate_adapters` returns: the statistics, every prediction, and the items that were left out."""

    results: EvaluationResults
    predictions: dict[str, dict[str, str]]  # "<condition>@<frames>" → item id → prediction
    excluded: dict[str, str] = field(default_factory=dict)  # item id → why
    report: ReportFiles | None = None


def load_eval_items(data: str | Path | Any, split: str = "test") -> list[EvalItem]:
    """Items from a JSONL manifest (`{id, video_path, prompt, task_type, target_text}` per line), a saved or named
    `datasets` dataset (columns `video`, `prompt`, `target`, optional `id`, `task_type`, `benchmark`, `spec`), or a
    `datasets.Dataset`. Manifest errors (`ManifestError`) name the file and line.

    A string is a local path when it exists; one that does not exist is looked up on the Hub only if it reads as a
    dataset name (`name` or `owner/name`), otherwise it is refused as not found ([`EvalDataNotFoundError`]). A local
    file must be a `.jsonl`/`.json` manifest and a local directory a dataset saved with `save_to_disk`
    ([`EvalDataError`] otherwise)."""
    if isinstance(data, (str, Path)):
        data = _load_eval_data(str(data), split)
    rows = list(data)
    if not rows:
        raise EvalDataError("The evaluation dataset is empty; pass a dataset with at least two items.")
    missing = {"prompt", "target"} - set(rows[0])
    if missing or not ({"video", "video_path", "spec"} & set(rows[0])):
        raise EvalDataError(
            f"The evaluation dataset needs columns `prompt`, `target` and `video` (or `video_path`/`spec`); missing "
            f"{sorted(missing) or ['video']}. Columns: {sorted(rows[0])}."
        )
    items = []
    for index, row in enumerate(rows):
        target = row["target"]
        items.append(
            EvalItem(
                id=str(row.get("id", index)),
                video=row.get("video", row.get("video_path")),
                prompt=row["prompt"],
                references=list(target) if isinstance(target, (list, tuple)) else [target],
                benchmark=str(row.get("benchmark") or row.get("task_type") or "default"),
                spec=row.get("spec"),
            )
        )
    return items


def _load_eval_data(data: str, split: str) -> Any:
    """The rows behind a `--data` string: a manifest, a saved dataset directory or a Hub dataset (see
    [`load_eval_items`])."""
    import datasets

    accepted = (
        "pass a JSONL manifest (.jsonl/.json), a directory written by `datasets`' `save_to_disk`, or a Hub dataset "
        "name"
    )
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".jsonl", ".json"):
            raise EvalDataError(f"'{data}' is neither a JSONL manifest nor a saved dataset; {accepted}.")
        return load_manifest(path)
    if path.is_dir():
        saved = (datasets.config.DATASET_STATE_JSON_FILENAME, datasets.config.DATASETDICT_JSON_FILENAME)
        if not any((path / name).is_file() for name in saved):
            raise EvalDataError(f"The directory '{data}' is not a dataset saved with `save_to_disk`; {accepted}.")
        loaded = datasets.load_from_disk(str(path))
    elif looks_like_local_path(data):
        raise EvalDataNotFoundError(f"No file or directory at '{data}'; {accepted}.")
    else:
        try:
            loaded = datasets.load_dataset(data)
        except (FileNotFoundError, ConnectionError) as exc:  # not on the Hub, or the Hub cannot be reached
            raise EvalDataNotFoundError(
                f"'{data}' is not a local path, and no Hub dataset of that name could be loaded ({exc}); {accepted}."
            ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise EvalDataError(f"'{data}' has no split '{split}'; available: {sorted(loaded)}. Pass --split.")
        return loaded[split]
    return loaded


class _PredictionCache:
    """JSONL cache of predictions keyed by (model, condition, frames, size, item, prompt).

    `model_key` identifies the base VLM (and the generation settings); `hypernetwork_key` the hypernetwork (its weights
    and the config fields that shape its input). Conditions that never use the hypernetwork (`in_context`,
    `no_video`) are keyed on the base alone, so a retrained hypernetwork reuses their predictions.
    """

    def __init__(self, path: Path | None, model_key: str, hypernetwork_key: str = "") -> None:
        self.path, self.model_key, self.hypernetwork_key = path, model_key, hypernetwork_key
        self.entries: dict[str, str] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                self.entries[entry["key"]] = entry["prediction"]

    def key(self, condition: str, frames: int, size: int | None, item: EvalItem) -> str:
        model_key = self.model_key if condition in BASE_ONLY_CONDITIONS else self.model_key + self.hypernetwork_key
        raw = json.dumps([model_key, condition, frames, size, item.id, item.prompt, str(item.video)])
        return hashlib.sha1(raw.encode()).hexdigest()

    def add(self, key: str, prediction: str) -> None:
        self.entries[key] = prediction
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "prediction": prediction}) + "\n")


def evaluate_adapters(
    model: Any,
    items: Sequence[EvalItem],
    metrics: Sequence[str | JudgeFn] = ("exact_match", "token_f1"),
    margin: float = 0.05,
    controls: Sequence[str] = CONTROLS,
    frames: Sequence[int] = (12,),
    sizes: Sequence[int | None] = (None,),
    max_new_tokens: int = 16,
    batch_size: int = 8,
    output_dir: str | Path | None = None,
    seed: int = 0,
    alpha: float = 0.05,
    n_bootstrap: int = 2000,
    progress: bool = True,
    video_loader: VideoLoader | None = None,
) -> EvaluationRun:
    """Answer `items` under the baseline, `adapter` and `controls` (at `frames[0]`, `sizes[0]`), and under the
    baseline and `adapter` at every other frame count / size; score with `metrics`; compare paired per item against
    the baseline at the user's pre-registered `margin`. With `output_dir`, predictions are cached there (a rerun
    with other metrics generates nothing) and the report is written there.

    Videos are read with `video_loader(source, num_frames, size)` ([`VideoLoader`]; default [`load_eval_video`]).
    Items with a `spec` need a loader that reads specs, e.g. `peft_hyper.testing.world.render_spec_video`."""
    _check_arguments(metrics, margin, controls, frames, sizes, max_new_tokens, batch_size)
    check_video_loader(items, video_loader)
    spec = model.base_model.input_spec
    # Files are sampled as the hypernetwork reads videos (its fps and sampling rule), for every condition alike.
    sampling = {"fps": spec.fps, "sampling": spec.frame_sampling}
    video_loader = video_loader or functools.partial(load_eval_video, **sampling)
    loaded_metrics = [load_metric(m) for m in metrics]
    if len(items) < 2:
        raise EvalDataError(f"Evaluation needs at least two items (paired statistics); got {len(items)}.")
    output = Path(output_dir) if output_dir is not None else None
    if output is not None:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # an existing file, a read-only parent, ...
            raise OutputPathError(
                f"Cannot use '{output}' as the report directory ({exc.strerror or exc}); pass a directory you can "
                "write to (it is created if missing)."
            ) from exc
    tuner = model.base_model
    base_key = f"{_fingerprint(p for n, p in tuner.model.named_parameters() if 'lora_' not in n)}|{max_new_tokens}"
    if sampling != {"fps": None, "sampling": "uniform"}:  # other frames for the base-only conditions too
        base_key += "|" + json.dumps(sampling)
    cache = _PredictionCache(
        output / "predictions.jsonl" if output else None,
        base_key,
        "|" + _fingerprint(tuner.hypernetwork.parameters()) + "|" + tuner.input_spec.cache_key(),
    )
    model.eval()

    videos, excluded = _load_videos(items, video_loader)
    kept = [item for item in items if item.id not in excluded]
    if len(kept) < 2:
        raise EvalDataError(f"Fewer than two items have a readable video ({len(excluded)} excluded): {excluded}.")
    first = videos[kept[0].id]
    if "shuffled" in controls and not any(videos[item.id] != first for item in kept[1:]):
        raise EvalDataError(
            "The shuffled control needs items about at least two different videos; drop it with --controls."
        )
    if excluded:
        logger.warning("%d item(s) excluded from every condition (unreadable video): %s", len(excluded), excluded)

    predictions: dict[str, dict[str, str]] = {}
    plan = [(c, frames[0], sizes[0]) for c in (BASELINE, "adapter", *controls)]
    plan += [
        (c, f, s) for f in frames for s in sizes for c in (BASELINE, "adapter") if (f, s) != (frames[0], sizes[0])
    ]
    for condition, num_frames, size in tqdm(plan, desc="conditions", disable=not progress):
        run_key = _run_key(condition, num_frames, size)
        predictions[run_key] = _predict(
            model,
            kept,
            videos,
            video_loader,
            condition,
            num_frames,
            size,
            cache,
            max_new_tokens,
            batch_size,
            seed,
            progress,
        )

    by_benchmark: dict[str, list[EvalItem]] = {}
    for item in kept:
        by_benchmark.setdefault(item.benchmark, []).append(item)
    if len(by_benchmark) > 1:
        by_benchmark = {"all": kept, **by_benchmark}
    benchmarks = []
    for name, group in by_benchmark.items():
        if len(group) < 2:
            logger.warning("Benchmark %r has fewer than two items; skipped.", name)
            continue
        scores = {key: _score(loaded_metrics, group, preds) for key, preds in predictions.items()}
        main = _run_key(BASELINE, frames[0], sizes[0])
        comparisons = {
            condition: _compare(
                scores[_run_key(condition, frames[0], sizes[0])], scores[main], margin, alpha, n_bootstrap, seed
            )
            for condition in ("adapter", *controls)
        }
        for size in sizes[1:]:  # resolution sweep: adapter vs in-context, both at that size
            comparisons[f"adapter@{size}px"] = _compare(
                scores[_run_key("adapter", frames[0], size)],
                scores[_run_key(BASELINE, frames[0], size)],
                margin,
                alpha,
                n_bootstrap,
                seed,
            )
        by_frames = {}
        if len(frames) > 1:
            for num_frames in frames:
                base = scores[_run_key(BASELINE, num_frames, sizes[0])]
                by_frames[num_frames] = {
                    "adapter": _compare(
                        scores[_run_key("adapter", num_frames, sizes[0])], base, margin, alpha, n_bootstrap, seed
                    )
                }
        benchmarks.append(BenchmarkResult(name=name, comparisons=comparisons, by_frame_count=by_frames))

    metadata = {
        "base_model": tuner.hyper_config.base_model_name_or_path,
        "margin": margin,
        "alpha": alpha,
        "frames": list(frames),
        "sizes": list(sizes),
        "n_items": len(kept),
        "excluded": len(excluded),
        "metrics": [getattr(m, "name", str(m)) for m in loaded_metrics],
    }
    results = EvaluationResults(benchmarks=benchmarks, baseline=BASELINE, metadata=metadata)
    run = EvaluationRun(results=results, predictions=predictions, excluded=excluded)
    if output is not None:
        run.report = write_report(results, output)
        data = json.loads(run.report.json.read_text(encoding="utf-8"))
        data["predictions"] = {
            key: [
                {"id": item.id, "prompt": item.prompt, "references": item.references, "prediction": preds[item.id]}
                for item in kept
            ]
            for key, preds in predictions.items()
        }
        data["excluded"] = excluded
        run.report.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return run


def _check_arguments(
    metrics: Sequence[str | JudgeFn],
    margin: float,
    controls: Sequence[str],
    frames: Sequence[int],
    sizes: Sequence[int | None],
    max_new_tokens: int,
    batch_size: int,
) -> None:
    """Refuse settings that cannot work before any model call ([`UsageError`] naming the argument)."""
    if not (isinstance(margin, numbers.Real) and math.isfinite(margin) and margin > 0):
        raise UsageError(
            f"margin must be > 0 and finite (a pre-registered equivalence margin, e.g. 0.05), got {margin}."
        )
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise UsageError(f"Unknown control(s) {unknown}; available: {list(CONTROLS)}.")
    if not metrics:
        raise UsageError(f"Pass at least one metric; available: {available_metrics()}.")
    unknown = [m for m in metrics if isinstance(m, str) and m not in available_metrics()]
    if unknown:
        raise UsageError(
            f"Unknown metric(s) {unknown}; available: {available_metrics()}, or a judge callable "
            "judge(predictions, references, prompts) -> list[float]."
        )
    for name, values, allow_none in (("frames", frames, False), ("sizes", sizes, True)):
        if not values or not all((allow_none and v is None) or _is_count(v) for v in values):
            raise UsageError(f"{name} must be one or more whole numbers >= 1, got {list(values)}.")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not _is_count(value):
            raise UsageError(f"{name} must be a whole number >= 1, got {value!r}.")


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _fingerprint(parameters: Iterable[torch.Tensor]) -> str:
    """A cheap identity of a set of weights: a hash of the first 1,024 values of each tensor, and of its shape."""
    digest = hashlib.sha1()
    for parameter in parameters:
        digest.update(str(tuple(parameter.shape)).encode())
        digest.update(parameter.detach().flatten()[:1024].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _run_key(condition: str, frames: int, size: int | None) -> str:
    return f"{condition}@{frames}" + (f"@{size}px" if size else "")


def load_eval_video(
    source: Any, num_frames: int, size: int | None = None, fps: float | None = None, sampling: str = "uniform"
) -> Video:
    """The default video loader: [`load_video`]`(source, num_frames, fps=fps, sampling=sampling)` (the evaluated
    model's sampling), resized (bilinear, antialiased) so that its longest edge is `size` px when `size` is given."""
    video = load_video(source, num_frames=num_frames, fps=fps, sampling=sampling)
    if size is not None:
        height, width = video.frames.shape[-2:]
        scale = size / max(height, width)
        resized = torch.nn.functional.interpolate(
            video.frames.float(), size=(round(height * scale), round(width * scale)), mode="bilinear", antialias=True
        )
        video = Video(frames=resized.round().clamp(0, 255).to(torch.uint8), metadata=video.metadata)
    return video


def import_video_loader(name: str) -> VideoLoader:
    """The callable `FUNCTION` of module `MODULE`, named `MODULE:FUNCTION` (`frames2lora eval --video-loader`).

    Raises [`UsageError`] when the name is malformed, the module cannot be imported, or it has no such callable."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--video-loader takes MODULE:FUNCTION (e.g. {SPEC_VIDEO_LOADER}), got {name!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--video-loader {name}: cannot import module {module_name!r} ({exc}).") from exc
    loader = getattr(module, attribute, None)
    if not callable(loader):
        raise UsageError(
            f"--video-loader {name}: module {module_name!r} has no callable {attribute!r}; pass a function "
            "(source, num_frames, size) -> peft_hyper.Video."
        )
    return loader


def check_video_loader(items: Sequence[EvalItem], video_loader: VideoLoader | None) -> None:
    """Refuse items with a synthetic-world `spec` when no `video_loader` is given: the default loader reads files, and
    the runtime does not import the synthetic world to render specs behind the user's back."""
    if video_loader is None and any(item.spec is not None for item in items):
        raise UsageError(
            "The evaluation data has a `spec` column (synthetic-world clips, rendered at any frame count); pass "
            f"--video-loader {SPEC_VIDEO_LOADER} (in Python: video_loader=render_spec_video), or drop the column to "
            "read the `video` files."
        )


def _load_videos(
    items: Sequence[EvalItem], video_loader: VideoLoader = load_eval_video
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each item's video source (its `spec`, else its `video`), every distinct one read once at one frame; unreadable
    ones are excluded from every condition (so pairs stay paired)."""
    videos: dict[str, Any] = {}
    excluded: dict[str, str] = {}
    errors: dict[str, str | None] = {}  # video key → load error (None: readable)
    for item in items:
        if item.spec is not None:
            source, key = item.spec, f"spec:{item.spec}"
        else:  # a video without a key is checked for its item alone
            source, key = item.video, video_key(item.video) or f"item:{item.id}"
        if key not in errors:
            try:
                video_loader(source, 1, None)
                errors[key] = None
            except UsageError:  # the loader cannot read this kind of source at all: not one bad video
                raise
            except (PeftHyperError, OSError) as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
        if errors[key] is None:
            videos[item.id] = source
        else:
            excluded[item.id] = errors[key]
    return videos, excluded


def _predict(
    model: Any,
    items: Sequence[EvalItem],
    videos: Mapping[str, Any],
    video_loader: VideoLoader,
    condition: str,
    num_frames: int,
    size: int | None,
    cache: _PredictionCache,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> dict[str, str]:
    tuner = model.base_model
    keys = {item.id: cache.key(condition, num_frames, size, item) for item in items}
    todo = [item for item in items if keys[item.id] not in cache.entries]
    donor = _derangement([item.id for item in items], videos, seed) if condition == "shuffled" else {}
    if condition == "bias_only" and todo:  # the same adapter for every item: load it once
        tuner.load_generated_adapter(tuner.generate_bias_adapter(), "eval000", activate=False)
    for start in tqdm(range(0, len(todo), batch_size), desc=condition, leave=False, disable=not progress):
        batch = todo[start : start + batch_size]
        prompts = [item.prompt for item in batch]
        if condition == BASELINE:
            clips = [video_loader(videos[item.id], num_frames, size) for item in batch]
            answers = tuner.answer(prompts, videos=clips, max_new_tokens=max_new_tokens)
        elif condition == "no_video":
            answers = tuner.answer(prompts, adapter_names="__base__", max_new_tokens=max_new_tokens)
        else:
            if condition == "bias_only":
                names = ["eval000"] * len(batch)
            else:
                # One adapter per distinct video of the batch (questions about the same clip share it: the point of
                # internalizing once), then a mixed batch with each question routed to its video's adapter.
                sources = [videos[donor.get(item.id, item.id)] for item in batch]
                unique = list(dict.fromkeys(sources))
                clips = [video_loader(source, num_frames, size) for source in unique]
                slot = {source: f"eval{index:03d}" for index, source in enumerate(unique)}
                for source, state_dict in zip(unique, tuner.generate_adapter(clips), strict=True):
                    tuner.load_generated_adapter(state_dict, slot[source], activate=False)
                names = [slot[source] for source in sources]
            answers = tuner.answer(prompts, adapter_names=names, max_new_tokens=max_new_tokens)
        for item, answer in zip(batch, answers, strict=True):
            cache.add(keys[item.id], answer)
    tuner.set_adapter(tuner.active_hypernetwork)
    return {item.id: cache.entries[keys[item.id]] for item in items}


def _derangement(ids: list[str], videos: Mapping[str, Any], seed: int) -> dict[str, str]:
    """Map each item to another item whose video differs (seeded)."""
    rng = random.Random(seed)
    order = ids[:]
    rng.shuffle(order)
    donor = {}
    for position, item_id in enumerate(order):
        for step in range(1, len(order)):
            candidate = order[(position + step) % len(order)]
            if videos[candidate] != videos[item_id]:
                donor[item_id] = candidate
                break
        else:
            raise ValueError("The shuffled control needs at least two different videos.")
    return donor


def _score(
    metrics: Sequence[Any], items: Sequence[EvalItem], predictions: Mapping[str, str]
) -> dict[str, list[float]]:
    scores = {}
    for metric in metrics:
        result = metric.compute(
            predictions=[predictions[item.id] for item in items],
            references=[item.references for item in items],
            prompts=[item.prompt for item in items],
        )
        scores[metric.name] = per_item_scores(result)
    return scores


def _compare(
    candidate: Mapping[str, list[float]],
    baseline: Mapping[str, list[float]],
    margin: float,
    alpha: float,
    n_bootstrap: int,
    seed: int,
) -> dict[str, PairedComparison]:
    return {
        name: paired_comparison(
            candidate[name], baseline[name], margin=margin, alpha=alpha, n_bootstrap=n_bootstrap, seed=seed
        )
        for name in candidate
    }
