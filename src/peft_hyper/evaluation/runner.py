"""Generation side of `frames2lora eval`: answer every item under every condition, cache predictions, score them and
compare each condition with a reference condition (by default the video-in-context baseline).

Conditions:
- `in_context`: the frozen base model with the video in context (the baseline), where its prompt fits the base's
  maximum length;
- `adapter`: the item's internalized adapter, question text-only (zero visual tokens);
- `no_video`: the frozen base model, question text-only;
- `bias_only`: the hypernetwork's input-independent block alone (an adapter from no video);
- `shuffled`: another item's adapter (a video with different content).

With `segment_frames` (segments of a video internalized separately and composed in rank space):
- `composed`: the video's segment adapters composed, exactly `generate_adapter(video, segment_frames=, max_rank=)`;
- `segments_shuffled`: at every segment position, another video's segment at that position, composed;
- `one_segment`: one segment's adapter alone (a seeded draw per video);
- `routed` (a hypernetwork with a segment router, `routing.py`): each question answered with the segment its router
  picks, or with `composed` when the router says it names no time (`HyperLoraModel.route`).

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
from ..routing import choose_segments
from ..video import Video, load_video
from .metrics import JudgeFn, available_metrics, load_metric, per_item_scores
from .report import BenchmarkResult, EvaluationResults, NotRun, ReportFiles, write_report
from .statistics import PairedComparison, paired_comparison

logger = logging.getLogger(__name__)

BASELINE = "in_context"
CONTROLS = ("no_video", "bias_only", "shuffled")
# Controls of composition: recombinations of each video's segment adapters (need `segment_frames`).
SEGMENT_CONTROLS = ("segments_shuffled", "one_segment")
SEGMENT_CONDITIONS = ("composed", "routed", *SEGMENT_CONTROLS)  # adapters built from a video's segment adapters
SEEDED_CONDITIONS = ("shuffled", *SEGMENT_CONTROLS)  # their adapters depend on `seed`
BASE_ONLY_CONDITIONS = (BASELINE, "no_video")  # answered by the base VLM alone
ALL_CONDITIONS = (BASELINE, "adapter", "composed", "routed", *CONTROLS, *SEGMENT_CONTROLS)

# How `evaluate_adapters` reads an item's video: `(source, num_frames, size) -> Video`, where `source` is the item's
# `spec` when it has one, else its `video`, and `size` the longest edge in px (`None`: as stored).
VideoLoader = Callable[[Any, int, int | None], Video]
# The loader of the synthetic world's `spec` column (in `peft_hyper.testing`, which the runtime does not import).
SPEC_VIDEO_LOADER = "peft_hyper.testing.world:render_spec_video"
LONG_SPEC_VIDEO_LOADER = "peft_hyper.testing.long_world:render_long_spec_video"


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
    # "<condition>@<frames>" → item id → prompt tokens, for items whose in-context prompt does not fit the base
    not_run: dict[str, dict[str, int]] = field(default_factory=dict)


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
    `no_video`) are keyed on the base alone, so a retrained hypernetwork reuses their predictions. The segment
    conditions' keys add `segment_frames` and `max_rank`, and the seeded controls' keys a non-zero `seed` (seed 0 keeps
    the keys of caches written before seeds were keyed).

    An in-context prompt that did not fit the base is recorded with its length (`prompt_tokens`) instead of a
    prediction, so that a rerun does not process the video again to find out.
    """

    def __init__(
        self,
        path: Path | None,
        model_key: str,
        hypernetwork_key: str = "",
        segment_frames: int | None = None,
        max_rank: int | None = None,
        seed: int = 0,
    ) -> None:
        self.path, self.model_key, self.hypernetwork_key = path, model_key, hypernetwork_key
        self.segment_frames, self.max_rank, self.seed = segment_frames, max_rank, seed
        self.entries: dict[str, str] = {}
        self.prompt_tokens: dict[str, int] = {}  # key → length of an in-context prompt that did not fit
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                if "prediction" in entry:
                    self.entries[entry["key"]] = entry["prediction"]
                else:
                    self.prompt_tokens[entry["key"]] = entry["prompt_tokens"]

    def key(self, condition: str, frames: int, size: int | None, item: EvalItem) -> str:
        model_key = self.model_key if condition in BASE_ONLY_CONDITIONS else self.model_key + self.hypernetwork_key
        fields: list[Any] = [model_key, condition, frames, size, item.id, item.prompt, str(item.video)]
        if condition in SEGMENT_CONDITIONS:
            fields += [self.segment_frames, self.max_rank]
        if condition in SEEDED_CONDITIONS and self.seed != 0:
            fields.append(self.seed)
        return hashlib.sha1(json.dumps(fields).encode()).hexdigest()

    def add(self, key: str, prediction: str) -> None:
        self.entries[key] = prediction
        self._append({"key": key, "prediction": prediction})

    def add_prompt_tokens(self, key: str, prompt_tokens: int) -> None:
        """Record that the prompt of `key` has `prompt_tokens` tokens and was not run."""
        self.prompt_tokens[key] = prompt_tokens
        self._append({"key": key, "prompt_tokens": prompt_tokens})

    def _append(self, entry: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


def evaluate_adapters(
    model: Any,
    items: Sequence[EvalItem],
    metrics: Sequence[str | JudgeFn] = ("exact_match", "token_f1"),
    margin: float = 0.05,
    controls: Sequence[str] | None = None,
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
    segment_frames: int | None = None,
    max_rank: int | None = None,
    reference: str = BASELINE,
) -> EvaluationRun:
    """Answer `items` under `in_context`, `adapter` (and `composed` with `segment_frames`) at every frame count and
    size, and under `controls` at `frames[0]`, `sizes[0]`; score with `metrics`; compare each condition paired per
    item with `reference` (default `in_context`) at the same frame count and size, at the user's pre-registered
    `margin`. With `output_dir`, predictions are cached there (a rerun with other metrics, or another `reference`,
    generates nothing) and the report is written there.

    Args:
        controls: negative controls (`CONTROLS`, and `SEGMENT_CONTROLS` with `segment_frames`); `None`: all of those
            that apply.
        segment_frames: also evaluate composed adapters: each video's sampled frames cut into segments of this many,
            one adapter per segment, composed in rank space (`composed`; rank `K·r + bias_rank`), and, with a
            hypernetwork that has a segment router, questions routed to one segment (`routed`). Each video's segment
            adapters are generated once per frame count and size and shared by every segment condition.
        max_rank: cap the rank of the segment conditions' adapters (`compose_adapters(..., max_rank=)`).
        reference: the condition the others are compared with: `in_context`, `adapter` or `composed`.

    An in-context prompt (the video's tokens, the question, and `max_new_tokens`) longer than the base's
    `max_position_embeddings` is not run: such items are listed in `EvaluationRun.not_run` and in the report, and
    comparisons with `in_context` use the items where it ran. When it ran for fewer than two items at the main frame
    count and size with `reference="in_context"`, a [`UsageError`] says to pass another reference.

    Videos are read with `video_loader(source, num_frames, size)` ([`VideoLoader`]; default [`load_eval_video`]).
    Items with a `spec` need a loader that reads specs, e.g. `peft_hyper.testing.world.render_spec_video`."""
    controls = check_conditions(controls, reference, segment_frames, max_rank)
    _check_arguments(metrics, margin, frames, sizes, max_new_tokens, batch_size)
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
        segment_frames=segment_frames,
        max_rank=max_rank,
        seed=seed,
    )
    model.eval()

    videos, excluded = _load_videos(items, video_loader)
    kept = [item for item in items if item.id not in excluded]
    if len(kept) < 2:
        raise EvalDataError(f"Fewer than two items have a readable video ({len(excluded)} excluded): {excluded}.")
    first = videos[kept[0].id]
    shuffling = [c for c in controls if c in ("shuffled", "segments_shuffled")]
    if shuffling and not any(videos[item.id] != first for item in kept[1:]):
        raise EvalDataError(
            f"The control(s) {shuffling} need items about at least two different videos; drop them with --controls."
        )
    if excluded:
        logger.warning("%d item(s) excluded from every condition (unreadable video): %s", len(excluded), excluded)

    # Conditions swept over every frame count and size, the reference first; controls at the main ones only.
    swept = [reference, *(c for c in swept_conditions(segment_frames) if c != reference)]
    if segment_frames is not None and tuner.router is not None:
        swept.append("routed")
    main = (frames[0], sizes[0])
    groups = [(main, [*swept, *controls])]
    groups += [((f, s), swept) for f in frames for s in sizes if (f, s) != main]
    max_positions = _max_positions(tuner)
    predictions: dict[str, dict[str, str]] = {}
    not_run: dict[str, dict[str, int]] = {}
    # closed before an error propagates, so that the error is the last line on the terminal
    with tqdm(total=sum(len(conditions) for _, conditions in groups), desc="conditions", disable=not progress) as bar:
        for (num_frames, size), conditions in groups:
            # Each video's segment adapters, generated once at this frame count and size, serve all segment conditions.
            segments = (
                _SegmentAdapters(
                    tuner, video_loader, [videos[i.id] for i in kept], num_frames, size, segment_frames, max_rank, seed
                )
                if segment_frames is not None
                else None
            )
            for condition in conditions:
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
                    segments=segments,
                    max_positions=max_positions,
                )
                skipped = {
                    item.id: cache.prompt_tokens[cache.key(condition, num_frames, size, item)]
                    for item in kept
                    if item.id not in predictions[run_key]
                }
                if skipped:
                    not_run[run_key] = skipped
                if condition == reference and (num_frames, size) == main and len(predictions[run_key]) < 2:
                    why = _not_fitting_reason(skipped, max_new_tokens, max_positions)
                    raise UsageError(
                        f"With the video in context, {len(skipped)} of {len(kept)} items do not fit the base at "
                        f"{_describe(num_frames, size)} ({why}), so there is no in-context reference to compare with. "
                        "Pass reference='adapter' (--reference adapter; or 'composed') to compare the conditions with "
                        "each other, or list first in --frames a frame count whose prompts fit."
                    )
                bar.update()

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
        compare = functools.partial(
            _compare_runs, scores, reference, margin=margin, alpha=alpha, n_bootstrap=n_bootstrap, seed=seed
        )
        candidates = {condition: compare(condition, *main) for condition in [*swept[1:], *controls]}
        for size in sizes[1:]:  # resolution sweep: each swept condition vs the reference, both at that size
            candidates.update({f"{c}@{size}px": compare(c, frames[0], size) for c in swept[1:]})
        comparisons = {condition: result for condition, result in candidates.items() if result is not None}
        by_frames = {}
        if len(frames) > 1:
            for num_frames in frames:
                row = {c: compare(c, num_frames, sizes[0]) for c in swept[1:]}
                row = {condition: result for condition, result in row.items() if result is not None}
                if row:
                    by_frames[num_frames] = row
        if not comparisons:
            logger.warning("Benchmark %r: %s ran for fewer than two of its items; skipped.", name, reference)
            continue
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
    if segment_frames is not None:
        metadata.update(segment_frames=segment_frames, max_rank=max_rank, seed=seed)
    not_run_records = [
        NotRun(
            condition=BASELINE,
            frames=num_frames,
            size=size,
            items=len(not_run[_run_key(BASELINE, num_frames, size)]),
            total=len(kept),
            reason=_not_fitting_reason(not_run[_run_key(BASELINE, num_frames, size)], max_new_tokens, max_positions),
        )
        for num_frames in frames
        for size in sizes
        if _run_key(BASELINE, num_frames, size) in not_run
    ]
    results = EvaluationResults(benchmarks=benchmarks, baseline=reference, metadata=metadata, not_run=not_run_records)
    run = EvaluationRun(results=results, predictions=predictions, excluded=excluded, not_run=not_run)
    if output is not None:
        run.report = write_report(results, output)
        data = json.loads(run.report.json.read_text(encoding="utf-8"))
        data["predictions"] = {
            key: [
                {"id": item.id, "prompt": item.prompt, "references": item.references, "prediction": preds[item.id]}
                for item in kept
                if item.id in preds
            ]
            for key, preds in predictions.items()
        }
        data["excluded"] = excluded
        data["not_run_items"] = not_run
        run.report.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return run


def swept_conditions(segment_frames: int | None = None) -> tuple[str, ...]:
    """The conditions evaluated at every frame count and size (the possible references): `in_context`, `adapter`,
    and `composed` with `segment_frames`."""
    return (BASELINE, "adapter") + (("composed",) if segment_frames is not None else ())


def check_conditions(
    controls: Sequence[str] | None,
    reference: str = BASELINE,
    segment_frames: int | None = None,
    max_rank: int | None = None,
) -> list[str]:
    """The controls to run — `None` means `CONTROLS`, plus `SEGMENT_CONTROLS` with `segment_frames` — after refusing,
    with a [`UsageError`] naming the option, what cannot work: an unknown control or reference, a segment control,
    `max_rank` or `reference="composed"` without `segment_frames`. `frames2lora eval` calls it before loading the
    model."""
    for name, value in (("segment_frames", segment_frames), ("max_rank", max_rank)):
        if value is not None and not _is_count(value):
            raise UsageError(f"{name} must be a whole number >= 1 (or None), got {value!r}.")
    if max_rank is not None and segment_frames is None:
        raise UsageError(
            "max_rank (--max-rank) caps the rank of composed adapters; pass segment_frames (--segment-frames N) too."
        )
    if controls is None:
        controls = CONTROLS + (SEGMENT_CONTROLS if segment_frames is not None else ())
    controls = list(controls)
    unknown = [c for c in controls if c not in CONTROLS + SEGMENT_CONTROLS]
    if unknown:
        raise UsageError(f"Unknown control(s) {unknown}; available: {list(CONTROLS + SEGMENT_CONTROLS)}.")
    segment_controls = [c for c in controls if c in SEGMENT_CONTROLS]
    if segment_controls and segment_frames is None:
        raise UsageError(
            f"The control(s) {segment_controls} recombine each video's segment adapters; pass segment_frames "
            "(--segment-frames N), or leave them out of the controls."
        )
    if reference not in swept_conditions(segment_frames):
        needs = "; 'composed' needs segment_frames (--segment-frames N)" if reference == "composed" else ""
        raise UsageError(
            f"reference must be one of {list(swept_conditions(segment_frames))}{needs}, got {reference!r}."
        )
    return controls


def _check_arguments(
    metrics: Sequence[str | JudgeFn],
    margin: float,
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
        long = any('"scenes"' in str(item.spec) for item in items)  # a long-world spec lists its scenes
        loader, function = (
            (LONG_SPEC_VIDEO_LOADER, "render_long_spec_video") if long else (SPEC_VIDEO_LOADER, "render_spec_video")
        )
        raise UsageError(
            f"The evaluation data has a `spec` column ({'long-world videos' if long else 'synthetic-world clips'}, "
            f"rendered from it); pass --video-loader {loader} (in Python: video_loader={function}), or drop the "
            "column to read the `video` files."
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
    *,
    segments: _SegmentAdapters | None = None,
    max_positions: int | None = None,
) -> dict[str, str]:
    """Answer `items` under `condition` (cached answers are not generated again) and return item id → prediction.
    `in_context` items whose prompt does not fit `max_positions` get no prediction (their length is cached)."""
    tuner = model.base_model
    keys = {item.id: cache.key(condition, num_frames, size, item) for item in items}

    def fits(prompt_tokens: int) -> bool:
        return max_positions is None or prompt_tokens + max_new_tokens <= max_positions

    known_too_long = {
        item.id
        for item in items
        if keys[item.id] in cache.prompt_tokens and not fits(cache.prompt_tokens[keys[item.id]])
    }
    todo = [item for item in items if keys[item.id] not in cache.entries and item.id not in known_too_long]
    donor = _derangement([item.id for item in items], videos, seed) if condition == "shuffled" else {}
    if condition == "bias_only" and todo:  # the same adapter for every item: load it once
        tuner.load_generated_adapter(tuner.generate_bias_adapter(), "eval000", activate=False)
    for start in tqdm(range(0, len(todo), batch_size), desc=condition, leave=False, disable=not progress):
        batch = todo[start : start + batch_size]
        if condition == BASELINE:
            clips = [video_loader(videos[item.id], num_frames, size) for item in batch]
            if max_positions is not None:
                # Past the positions the base was trained on, RoPE extrapolates without an error and the answers
                # mean nothing: measure the prompts (one processor pass, no model forward) and run those that fit.
                lengths = tuner.video_inputs(clips, [item.prompt for item in batch])["attention_mask"].sum(dim=1)
                for item, length in zip(batch, lengths.tolist(), strict=True):
                    if not fits(length):
                        cache.add_prompt_tokens(keys[item.id], length)
                fitting = [index for index, length in enumerate(lengths.tolist()) if fits(length)]
                batch, clips = [batch[i] for i in fitting], [clips[i] for i in fitting]
            prompts = [item.prompt for item in batch]
            answers = tuner.answer(prompts, videos=clips, max_new_tokens=max_new_tokens) if batch else []
        else:
            prompts = [item.prompt for item in batch]
            if condition == "no_video":
                names = ["__base__"] * len(batch)
            elif condition == "bias_only":
                names = ["eval000"] * len(batch)
            else:
                # One adapter per distinct video of the batch (questions about the same clip share it: the point of
                # internalizing once), then a mixed batch with each question routed to its video's adapter.
                sources = [videos[donor.get(item.id, item.id)] for item in batch]
                if condition == "routed":  # one adapter per (video, segment the router picks)
                    sources = list(zip(sources, segments.route(prompts, sources), strict=True))
                unique = list(dict.fromkeys(sources))
                slot = {source: f"eval{index:03d}" for index, source in enumerate(unique)}
                if condition in SEGMENT_CONDITIONS:
                    adapters = [segments.adapter(condition, source) for source in unique]
                else:
                    clips = [video_loader(source, num_frames, size) for source in unique]
                    adapters = tuner.generate_adapter(clips)
                for source, state_dict in zip(unique, adapters, strict=True):
                    tuner.load_generated_adapter(state_dict, slot[source], activate=False)
                names = [slot[source] for source in sources]
            answers = tuner.answer(prompts, adapter_names=names, max_new_tokens=max_new_tokens)
        for item, answer in zip(batch, answers, strict=True):
            cache.add(keys[item.id], answer)
    tuner.set_adapter(tuner.active_hypernetwork)
    return {item.id: cache.entries[keys[item.id]] for item in items if keys[item.id] in cache.entries}


class _SegmentAdapters:
    """The adapters of the segment conditions at one frame count and size, built from each video's segment adapters
    (`HyperLoraModel.generate_segment_adapters`), which are generated once, on first use, and serve all three:

    - `composed`: the video's segments composed (`compose_adapters`), exactly `generate_adapter(video,
      segment_frames=, max_rank=)`;
    - `segments_shuffled`: segment `k` of another video at every position `k`, composed. The donors are a seeded
      derangement of the videos that have a `k`-th segment, drawn anew for each `k` (a random cyclic order, each video
      taking the next one's segment), so a video's positions and their timestamps are kept and its content is not;
    - `one_segment`: one segment of the video alone, drawn per video from a generator seeded with `seed` and the
      video (the same segment for every question about it), through the same composition (`max_rank` included);
    - `routed`: for a (video, choice) pair of `route`, the segment chosen, alone, or `composed` for `None`.

    Segment adapters are kept on the CPU without their bias block, which is the same in all of them and kept once:
    `K · r · Σ(in + out)` floats for a video of `K` segments (`r` the hypernetwork's rank, the sum over its targets).
    """

    def __init__(
        self,
        tuner: Any,
        video_loader: VideoLoader,
        sources: Sequence[Any],
        num_frames: int,
        size: int | None,
        segment_frames: int,
        max_rank: int | None,
        seed: int,
    ) -> None:
        self.tuner, self.video_loader, self.sources = tuner, video_loader, list(dict.fromkeys(sources))
        self.num_frames, self.size, self.segment_frames = num_frames, size, segment_frames
        self.max_rank, self.seed = max_rank, seed
        self.bias_rank = tuner.hyper_config.bias_rank
        self._generated: dict[Any, list[dict[str, torch.Tensor]]] = {}  # source → each segment's own ranks
        self._bias: dict[str, torch.Tensor] = {}
        self._donors: dict[tuple[Any, int], Any] | None = None
        self._frame_times: dict[Any, torch.Tensor] = {}  # source → its sampled frames' times (s)

    def adapter(self, condition: str, source: Any) -> dict[str, torch.Tensor]:
        """The adapter of `condition` (one of `SEGMENT_CONDITIONS`) for the video `source` (for `routed`, a pair of
        the video and the segment `route` chose)."""
        if condition == "routed":
            source, choice = source
            condition = "composed" if choice is None else "routed"
        count = self.num_segments(source)
        if condition == "composed":
            parts = [self.segment(source, k) for k in range(count)]
        elif condition == "one_segment":
            parts = [self.segment(source, self.chosen_segment(source))]
        elif condition == "routed":
            parts = [self.segment(source, choice)]
        elif condition == "segments_shuffled":
            donors = self.donors()
            parts = [self.segment(donors[source, k], k) for k in range(count)]
        else:
            raise ValueError(f"{condition!r} is not a segment condition; expected one of {SEGMENT_CONDITIONS}.")
        return self.tuner.compose_adapters(parts, max_rank=self.max_rank)

    def num_segments(self, source: Any) -> int:
        return len(self._parts(source))

    def route(self, prompts: Sequence[str], sources: Sequence[Any]) -> list[int | None]:
        """The segment of its video the router picks for each prompt (`None`: the prompt names no time)."""
        choices: list[int | None] = [None] * len(prompts)
        for source in dict.fromkeys(sources):
            rows = [i for i, s in enumerate(sources) if s == source]
            self._parts(source)  # the video's segments are generated, and its frame times kept, on first use
            frame_times = self._frame_times[source]
            starts = frame_times[:: self.segment_frames]
            probabilities = self.tuner.segment_probabilities([prompts[i] for i in rows], frame_times, starts)
            for row, choice in zip(rows, choose_segments(probabilities), strict=True):
                choices[row] = choice
        return choices

    def segment(self, source: Any, index: int) -> dict[str, torch.Tensor]:
        """Segment `index`'s adapter of `source` as generated (its own ranks, then the bias block)."""
        own = self._parts(source)[index]
        return {key: torch.cat([own[key], self._bias[key]], dim=0 if ".lora_A." in key else 1) for key in own}

    def chosen_segment(self, source: Any) -> int:
        """The `one_segment` control's segment of `source` (`random.Random` seeded with a string is reproducible)."""
        return random.Random(f"{self.seed}|one_segment|{source}").randrange(self.num_segments(source))

    def donors(self) -> dict[tuple[Any, int], Any]:
        """(video, position) → the video whose segment at that position replaces it in `segments_shuffled`."""
        if self._donors is None:
            counts = {source: self.num_segments(source) for source in self.sources}
            donors = {}
            for k in range(max(counts.values())):
                holders = [source for source in self.sources if counts[source] > k]
                if len(holders) < 2:
                    raise EvalDataError(
                        f"segments_shuffled needs at least two videos with a segment at position {k} (frames "
                        f"{k * self.segment_frames}+ at {self.num_frames} frames); only one has it. Evaluate "
                        "videos of similar length, or leave segments_shuffled out of --controls."
                    )
                random.Random(f"{self.seed}|segments_shuffled|{k}").shuffle(holders)
                donors.update({(source, k): holders[(i + 1) % len(holders)] for i, source in enumerate(holders)})
            self._donors = donors
        return self._donors

    def _parts(self, source: Any) -> list[dict[str, torch.Tensor]]:
        if source not in self._generated:
            clip = self.video_loader(source, self.num_frames, self.size)
            self._frame_times[source] = torch.tensor(clip.metadata.timestamps)
            own_ranks = []
            for part in self.tuner.generate_segment_adapters(clip, self.segment_frames):
                own, self._bias = _split_bias_block(part, self.bias_rank)
                own_ranks.append(own)
            self._generated[source] = own_ranks
        return self._generated[source]


def _split_bias_block(
    state_dict: Mapping[str, torch.Tensor], bias_rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A generated adapter's own ranks and its bias block (the last `bias_rank` ranks: rows of A `(R, in)`, columns
    of B `(out, R)`), as CPU copies."""
    own, bias = {}, {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        if ".lora_A." in key:
            split = tensor.shape[0] - bias_rank
            own[key], bias[key] = tensor[:split].clone(), tensor[split:].clone()
        else:
            split = tensor.shape[1] - bias_rank
            own[key], bias[key] = tensor[:, :split].clone(), tensor[:, split:].clone()
    return own, bias


def _max_positions(tuner: Any) -> int | None:
    """The base's maximum sequence length (its text model's `max_position_embeddings`), if it declares one."""
    return getattr(tuner.model.config.get_text_config(), "max_position_embeddings", None)


def _describe(num_frames: int, size: int | None) -> str:
    return f"{num_frames} frames" + (f" at {size} px" if size else "")


def _not_fitting_reason(prompt_tokens: Mapping[str, int], max_new_tokens: int, max_positions: int | None) -> str:
    """Why in-context items were not run, in a few words."""
    low, high = min(prompt_tokens.values()), max(prompt_tokens.values())
    span = f"{low:,}" if low == high else f"{low:,}–{high:,}"
    return (
        f"prompts of {span} tokens + {max_new_tokens} new tokens > the base's {max_positions:,} positions "
        "(max_position_embeddings)"
    )


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
) -> dict[str, dict[str, float]]:
    """metric name → item id → score, for the items of `items` that have a prediction, in their order."""
    answered = [item for item in items if item.id in predictions]
    scores: dict[str, dict[str, float]] = {}
    for metric in metrics:
        if not answered:
            scores[metric.name] = {}
            continue
        result = metric.compute(
            predictions=[predictions[item.id] for item in answered],
            references=[item.references for item in answered],
            prompts=[item.prompt for item in answered],
        )
        scores[metric.name] = dict(zip((item.id for item in answered), per_item_scores(result), strict=True))
    return scores


def _compare_runs(
    scores: Mapping[str, Mapping[str, Mapping[str, float]]],
    reference: str,
    condition: str,
    num_frames: int,
    size: int | None,
    **statistics: Any,
) -> dict[str, PairedComparison] | None:
    """`condition` vs `reference` at `num_frames` and `size`, from the runs' scores (see [`_compare`])."""
    return _compare(
        scores[_run_key(condition, num_frames, size)], scores[_run_key(reference, num_frames, size)], **statistics
    )


def _compare(
    candidate: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    margin: float,
    alpha: float,
    n_bootstrap: int,
    seed: int,
) -> dict[str, PairedComparison] | None:
    """Per metric, the paired comparison over the items both conditions answered; `None` when fewer than two."""
    comparisons = {}
    for name, by_item in candidate.items():
        common = [item_id for item_id in by_item if item_id in baseline[name]]
        if len(common) < 2:
            return None
        comparisons[name] = paired_comparison(
            [by_item[i] for i in common],
            [baseline[name][i] for i in common],
            margin=margin,
            alpha=alpha,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    return comparisons
