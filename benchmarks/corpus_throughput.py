"""Corpus internalization throughput: videos per second, batched vs one by one, and with 2 processes.

Every path runs `peft_hyper.corpus.internalize_dataset` over one JSONL manifest of synthetic-world clips
(`peft_hyper.testing.world.write_clip`, 12 frames, 64 px by default), writing one PEFT LoRA directory per video and
the index, into a fresh output directory each time:

* in-process, `batch_size` B for each `--batch-sizes` (B = 1 is one by one): the same loaded model, after one
  untimed warm-up pass, repeats interleaved so that every setting sees the same machine load; the time is split into
  video decoding (`load_videos`), adapter generation (`generate_adapter`: processor, VLM and hypernetwork forwards) and
  writing (`save_adapter_state_dict`);
* `frames2lora internalize-dataset` in a subprocess, with 1 process and under `accelerate launch --num_processes N`
  for each `--processes` (the code path of a real sharded job: each process loads the model, takes every N-th video
  and appends to its own index shard; the main process merges the index). Each process prints the time of its
  `internalize_dataset` call, which is reported as the loop time (the last process to finish; the main process also
  waits for the others), next to the wall time of the whole command (interpreter start-up and model loading included).

`--arch default` is the embedded default checkpoint (`frames2lora-synthetic`); `256M` / `500M` / `2.2B` are the real
SmolVLM2 architectures with random weights and the default `HyperLoraConfig` (rank 16 + bias 16 on every `down_proj`),
saved to a temporary checkpoint for the subprocess runs (`--vision-layers` / `--text-layers` make a depth-reduced
proxy). The result also lists the adapter bytes per video on disk: measured (the `adapter_model.safetensors` files
written) and, for every architecture at full depth, computed from the target shapes on the meta device, with the GPU
memory one vLLM LoRA slot takes at that rank. Example (the figures in docs/benchmarks.md):

    python benchmarks/corpus_throughput.py --arch default --videos 32 --batch-sizes 1 4 8 --processes 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# One line per process from `frames2lora internalize-dataset`.
_SUMMARY = re.compile(r"^(\d+) written, (\d+) already done, (\d+) failed \(([\d.]+)s\)", re.MULTILINE)
FULL_ARCHS = ("256M", "500M", "2.2B")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch",
        nargs="+",
        default=["default"],
        choices=["default", "tiny", *FULL_ARCHS],
        help="'default': the embedded default checkpoint; 'tiny': the test-suite model; else a SmolVLM2 (random)",
    )
    parser.add_argument("--videos", type=int, default=32, help="videos in the corpus")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip (every frame is sampled)")
    parser.add_argument("--size", type=int, default=64, help="clip height and width in pixels")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8], help="in-process settings; 1 first")
    parser.add_argument(
        "--processes", nargs="*", type=int, default=[1, 2], help="subprocess runs of the command (none: skip them)"
    )
    parser.add_argument("--launch-batch-size", type=int, default=None, help="batch size of the subprocess runs")
    parser.add_argument("--repeats", type=int, default=2, help="timed in-process passes per batch size (median)")
    parser.add_argument("--vision-layers", type=int, default=None, help="depth-reduced proxy of a real architecture")
    parser.add_argument("--text-layers", type=int, default=None, help="depth-reduced proxy of a real architecture")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (OMP_NUM_THREADS)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="device of the in-process runs (the command has no device option: it runs on the CPU, so --processes "
        "are skipped on any other device)",
    )
    parser.add_argument("--dtype", default="fp32", choices=sorted(common.DTYPES), help="VLM dtype (real archs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output path (default: benchmarks/results/)")
    parser.add_argument("--tag", default="", help="suffix for the default JSON file name")
    args = parser.parse_args(argv)
    if args.batch_sizes[0] != 1:
        parser.error("--batch-sizes must start with 1 (the one-by-one baseline the ratios are taken against)")
    if args.launch_batch_size is None:
        args.launch_batch_size = max(args.batch_sizes)
    if args.device != "cpu" and args.processes:
        print(f"--processes skipped: `frames2lora internalize-dataset` loads the model on the CPU, not {args.device}")
        args.processes = []
    return args


# ---------------------------------------------------------------------------------------------------- corpus
def write_corpus(directory: Path, videos: int, frames: int, size: int, seed: int) -> Path:
    """`videos` synthetic-world clips and a JSONL manifest naming them (ids `clip-00000`, ...)."""
    from peft_hyper.testing.world import clip_seed, sample_spec, write_clip

    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(videos):
        path = write_clip(
            sample_spec(clip_seed(seed, "benchmark", index)), directory / f"{index:05d}.mp4", frames, size
        )
        rows.append({"id": f"clip-{index:05d}", "video": path.name})
    manifest = directory / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


# ---------------------------------------------------------------------------------------------------- models
def load(args: argparse.Namespace, arch: str, work: Path) -> tuple[Any, str | None]:
    """The PeftModel to time in-process, and the checkpoint directory the subprocess runs load (None: the default)."""
    if arch == "default":
        from peft_hyper.cli import load_model

        return load_model(None).to(args.device), None
    built = common.build(
        arch,
        args.frames,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        vision_layers=args.vision_layers,
        text_layers=args.text_layers,
    )
    model = built["model"].to(args.device).eval()  # the hypernetwork too (it keeps its fp32 dtype)
    checkpoint = None
    if args.processes:
        # A checkpoint on disk for the command: the base (weights + processor) and the hypernetwork naming it.
        base, checkpoint = work / f"{arch}-base", work / f"{arch}-frames2lora"
        built["vlm"].save_pretrained(base)
        built["processor"].save_pretrained(base)
        model.peft_config["default"].base_model_name_or_path = str(base)
        model.save_pretrained(checkpoint)
        checkpoint = str(checkpoint)
    return model, checkpoint


# ---------------------------------------------------------------------------------------------------- in-process
def run_in_process(model: Any, manifest: Path, out: Path, batch_size: int, device: str) -> dict[str, Any]:
    """One pass of `internalize_dataset` into the fresh directory `out`, timed as a whole and by stage."""
    from peft_hyper.corpus import internalize_dataset

    tuner = model.base_model
    clock = common.StageClock(device)
    with (
        clock.wrap_method(tuner, "load_videos", "decode"),
        clock.wrap_method(tuner, "generate_adapter", "generate"),
        clock.wrap_method(tuner, "save_adapter_state_dict", "save"),
    ):
        wall, cpu, result = common.timed(
            # one process, named as such: accelerate's state is left to the command runs
            lambda: internalize_dataset(
                model, manifest, out, batch_size=batch_size, process_index=0, num_processes=1, progress=False
            ),
            device,
        )
    if result.failed or result.skipped:
        raise RuntimeError(f"unexpected corpus result: failed {result.failed}, skipped {result.skipped}")
    # `generate_adapter` passes its already decoded videos through `load_videos` again (no decoding): that negligible
    # time is in both stages.
    return {"s": wall, "cpu_s": cpu, "written": len(result.written), **{f"{k}_s": v for k, v in clock.totals.items()}}


def in_process(args: argparse.Namespace, model: Any, manifest: Path, work: Path, videos: int) -> list[dict[str, Any]]:
    """One row per batch size: the median of `--repeats` passes over the corpus, after an untimed warm-up pass."""
    warmup = max(args.batch_sizes)
    run_in_process(model, manifest_head(manifest, warmup), work / "warmup", warmup, args.device)
    runs: dict[int, list[dict[str, Any]]] = {b: [] for b in args.batch_sizes}
    for repeat in range(args.repeats):
        order = args.batch_sizes if repeat % 2 == 0 else args.batch_sizes[::-1]
        for batch_size in order:
            run = run_in_process(model, manifest, work / f"b{batch_size}-r{repeat}", batch_size, args.device)
            runs[batch_size].append(run)
            print(
                f"  batch {batch_size}, pass {repeat}: {run['s']:.2f} s ({videos / run['s']:.2f} videos/s)", flush=True
            )
    rows = []
    for batch_size in args.batch_sizes:
        seconds = common.median([r["s"] for r in runs[batch_size]])
        row = {
            "path": "in-process",
            "processes": 1,
            "batch_size": batch_size,
            "seconds": seconds,
            "seconds_all": [r["s"] for r in runs[batch_size]],
            "cpu_seconds": common.median([r["cpu_s"] for r in runs[batch_size]]),
            "videos_per_s": videos / seconds,
        }
        # CPU seconds of this process: on a shared machine, a throughput that the other jobs' load does not change.
        row["videos_per_cpu_s"] = videos / row["cpu_seconds"]
        for stage in ("decode", "generate", "save"):
            row[f"{stage}_s"] = common.median([r.get(f"{stage}_s", 0.0) for r in runs[batch_size]])
        rows.append(row)
    for row in rows:
        row["speedup"] = row["videos_per_s"] / rows[0]["videos_per_s"]
    return rows


def manifest_head(manifest: Path, count: int) -> Path:
    """A manifest of the first `count` videos of `manifest` (for the warm-up pass), beside it."""
    head = manifest.with_name(f"head-{count}.jsonl")
    head.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[:count]))
    return head


# ---------------------------------------------------------------------------------------------------- subprocesses
def run_command(
    args: argparse.Namespace, checkpoint: str | None, manifest: Path, out: Path, processes: int
) -> dict[str, Any]:
    """`frames2lora internalize-dataset` with `processes` processes (`accelerate launch` when more than one)."""
    command = [sys.executable, "-m"]
    if processes > 1:
        command += [
            "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m",
        ]  # fmt: skip
    command += ["peft_hyper.cli"]
    if checkpoint is not None:
        command += ["--model", checkpoint]
    command += ["internalize-dataset", str(manifest), "-o", str(out), "--batch-size", str(args.launch_batch_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start, cpu = time.perf_counter(), _children_cpu_seconds()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu
    summaries = _SUMMARY.findall(done.stdout)
    if done.returncode != 0 or len(summaries) != processes:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    written = [int(s[0]) for s in summaries]
    loop = max(float(s[3]) for s in summaries)
    return {
        "path": f"command, {processes} process{'es' if processes > 1 else ''}",
        "processes": processes,
        "batch_size": args.launch_batch_size,
        "seconds": loop,
        "wall_seconds": wall,
        "cpu_seconds_incl_startup": cpu,
        "written_per_process": sorted(written),
        "shards": len(list(out.glob("index-*-of-*.jsonl"))),
    }


def subprocess_runs(
    args: argparse.Namespace, checkpoint: str | None, manifest: Path, work: Path, videos: int
) -> list[dict[str, Any]]:
    rows = []
    for processes in args.processes:
        row = run_command(args, checkpoint, manifest, work / f"cmd-p{processes}", processes)
        if sum(row["written_per_process"]) != videos:
            raise RuntimeError(f"{processes} processes wrote {row['written_per_process']} of {videos} videos")
        row["videos_per_s"] = videos / row["seconds"]
        row["videos_per_s_wall"] = videos / row["wall_seconds"]
        rows.append(row)
        print(
            f"  {row['path']}: loop {row['seconds']:.2f} s ({row['videos_per_s']:.2f} videos/s), wall "
            f"{row['wall_seconds']:.1f} s, written per process {row['written_per_process']}",
            flush=True,
        )
    for row in rows:
        row["speedup"] = row["videos_per_s"] / rows[0]["videos_per_s"]
        row["speedup_wall"] = row["videos_per_s_wall"] / rows[0]["videos_per_s_wall"]
    return rows


def _children_cpu_seconds() -> float:
    """CPU seconds of the finished child processes (and of their own waited-for children: accelerate's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- adapter sizes
def adapter_sizes(model: Any | None = None, arch: str | None = None, dtype_bytes: int = 2) -> dict[str, Any]:
    """Bytes of one generated adapter at its rank, and of one vLLM LoRA slot at that rank.

    The adapter: its tensors (fp32, as generated and written) and the directory `save_adapter_state_dict` writes for
    an adapter of exactly these shapes (zeros; the sizes do not depend on the values). vLLM allocates, for every LoRA
    slot, A `(max_lora_rank, in)` and B `(out, max_lora_rank)` in the LoRA dtype (`dtype_bytes`; bf16 by default on
    GPU) for each language-model linear layer it wraps: by default all of them (q/k/v/o and gate/up/down for these
    Llama decoders), or only the adapter's targets with `--lora-target-modules`. Built on the meta device from `arch`
    (a full-depth SmolVLM2 with the default `HyperLoraConfig`) unless `model` is given.
    """
    from peft_hyper.lora import lora_state_dict_keys

    if model is None:
        from peft import get_peft_model
        from transformers import SmolVLMForConditionalGeneration

        import peft_hyper
        from peft_hyper.testing.models import smolvlm2_config

        with torch.device("meta"):
            model = get_peft_model(
                SmolVLMForConditionalGeneration(smolvlm2_config(arch)), peft_hyper.HyperLoraConfig()
            )
    tuner = model.base_model
    rank = tuner.hyper_config.total_rank
    targets = tuner.hypernetwork.targets
    zeros = {}
    for target in targets:
        key_a, key_b = lora_state_dict_keys(target.name)
        zeros[key_a] = torch.zeros(rank, target.in_features)
        zeros[key_b] = torch.zeros(target.out_features, rank)
    with tempfile.TemporaryDirectory() as tmp:
        tuner.save_adapter_state_dict(zeros, Path(tmp) / "adapter")
        safetensors_bytes = (Path(tmp) / "adapter" / "adapter_model.safetensors").stat().st_size
        config_bytes = (Path(tmp) / "adapter" / "adapter_config.json").stat().st_size
    text = tuner.model.config.text_config
    hidden, inter = text.hidden_size, text.intermediate_size
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    q, kv = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    # in + out of q, k, v, o, gate, up, down in one decoder layer
    all_linear = (hidden + q) + 2 * (hidden + kv) + (q + hidden) + 2 * (hidden + inter) + (inter + hidden)
    target_sum = sum(t.in_features + t.out_features for t in targets)
    return {
        "rank": rank,
        "targets": len(targets),
        "target_kinds": sorted({t.kind for t in targets}),
        "text_layers": text.num_hidden_layers,
        "adapter_tensor_bytes": target_sum * rank * 4,
        "safetensors_bytes": safetensors_bytes,
        "dir_bytes": safetensors_bytes + config_bytes,
        "vllm_slot_bytes_targets_only": target_sum * rank * dtype_bytes,
        "vllm_slot_bytes_all_linear": all_linear * text.num_hidden_layers * rank * dtype_bytes,
        "vllm_dtype_bytes": dtype_bytes,
        "base_parameters": sum(p.numel() for name, p in tuner.model.named_parameters() if "lora_" not in name),
    }


def written_adapter_bytes(out: Path) -> dict[str, float]:
    """Mean sizes of the adapter directories an in-process run wrote into `out`."""
    weights = [p.stat().st_size for p in out.glob("adapters/*/adapter_model.safetensors")]
    configs = [p.stat().st_size for p in out.glob("adapters/*/adapter_config.json")]
    return {
        "written_adapters": len(weights),
        "written_safetensors_bytes_mean": sum(weights) / len(weights),
        "written_dir_bytes_mean": (sum(weights) + sum(configs)) / len(weights),
    }


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup(args)
    result: dict[str, Any] = {
        "benchmark": "corpus_throughput",
        "args": vars(args),
        "machine": common.machine_info(args.device),
        "archs": [],
        "adapter_sizes_full_depth": {arch: adapter_sizes(arch=arch) for arch in FULL_ARCHS},
    }
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = write_corpus(work / "clips", args.videos, args.frames, args.size, args.seed)
        for arch in args.arch:
            print(f"[{arch}] {args.videos} videos, {args.frames} frames, {args.size} px", flush=True)
            model, checkpoint = load(args, arch, work)
            rows = in_process(args, model, manifest, work / arch, args.videos)
            sizes = adapter_sizes(model)
            sizes.update(written_adapter_bytes(work / arch / "b1-r0"))
            del model
            rows += subprocess_runs(args, checkpoint, manifest, work / arch, args.videos)
            for row in rows:
                row["arch"] = arch
            result["archs"].append({"arch": arch, "rows": rows, "adapter_sizes": sizes})
            table += rows
    result["table"] = common.print_table(
        table,
        [
            ("arch", "arch"),
            ("path", "path"),
            ("processes", "processes"),
            ("batch_size", "videos per forward"),
            ("seconds", "seconds"),
            ("videos_per_s", "videos/s"),
            ("speedup", "ratio"),
            ("videos_per_cpu_s", "videos per CPU-second"),
            ("decode_s", "decode (s)"),
            ("generate_s", "generate (s)"),
            ("save_s", "save (s)"),
            ("wall_seconds", "wall incl. start-up (s)"),
            ("cpu_seconds_incl_startup", "CPU incl. start-up (s)"),
        ],
        title=f"Corpus internalization ({args.videos} videos, {args.frames} frames, {args.size} px, {args.device})",
    )
    size_rows = [{"arch": a["arch"], **a["adapter_sizes"]} for a in result["archs"]]
    size_rows += [
        {"arch": f"{arch} (full depth, analytic)", **s} for arch, s in result["adapter_sizes_full_depth"].items()
    ]
    for row in size_rows:
        for key in (
            "adapter_tensor_bytes",
            "safetensors_bytes_mean",
            "vllm_slot_bytes_targets_only",
            "vllm_slot_bytes_all_linear",
        ):
            if key in row:
                row[key.replace("bytes", "mib")] = row[key] / 2**20
    result["size_table"] = common.print_table(
        size_rows,
        [
            ("arch", "arch"),
            ("rank", "rank"),
            ("targets", "LoRA modules"),
            ("adapter_tensor_mib", "adapter tensors (MiB, fp32)"),
            ("safetensors_bytes", "adapter_model.safetensors (bytes)"),
            ("written_safetensors_bytes_mean", "written in this run, mean (bytes)"),
            ("vllm_slot_mib_targets_only", "vLLM slot, targets only (MiB, bf16)"),
            ("vllm_slot_mib_all_linear", "vLLM slot, all linear (MiB, bf16)"),
        ],
        title="Adapter bytes per video",
    )
    common.finish(result, args.out or common.output_path(args, "corpus_throughput"))


if __name__ == "__main__":
    main()
