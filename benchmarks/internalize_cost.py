"""Internalization cost: wall time and peak memory of `generate_adapter`, stage by stage, against one plain VLM forward
over the same video (same processor inputs).

Stages (the same calls `HyperLoraModel.generate_adapter` makes, timed one by one):
  decode      peft_hyper.load_video(path, num_frames)                  (torchcodec)
  processor   tuner.hypernetwork_inputs([video])                       (SmolVLMProcessor: resize, normalise, template)
  vision      SmolVLM vision tower + connector, inside the VLM forward (forward hooks)
  text        text decoder layers run before the stream stops (the rest of `generate_lora_factors`)
  hypernet    HyperNetwork.generate_for_layer, summed over layers      (wrapped)
  export      peft_hyper.lora.factors_to_state_dicts + check_finite
Baselines: `vlm(**inputs, use_cache=False)` (with the lm head over every position, as a plain forward does) and the
body only `vlm.model(**inputs, use_cache=False)` (no lm head). Peak memory is the peak RSS above the level at the start
of the call (sampled every 2 ms) on CPU and `torch.cuda.max_memory_allocated` above the start on CUDA. Example:

    python benchmarks/internalize_cost.py --arch 500M --frames 16 --repeats 1
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

STAGES = ("decode", "processor", "vision", "text", "hypernet", "export")


def staged_generate_adapter(tuner, path: Path, frames: int, device: str) -> tuple[dict[str, float], dict]:
    """`tuner.generate_adapter(path)` split into timed stages; returns (seconds per stage, state dict)."""
    import peft_hyper
    from peft_hyper.lora import check_finite, factors_to_state_dicts

    clock = common.StageClock(device)
    clock.start("decode")
    videos = [peft_hyper.load_video(path, num_frames=frames)]
    clock.stop("decode")
    clock.start("processor")
    inputs = tuner.hypernetwork_inputs(videos)
    clock.stop("processor")
    vlm_body = tuner.model.model
    with (
        torch.no_grad(),
        clock.hook_module(vlm_body.vision_model, "vision"),
        clock.hook_module(vlm_body.connector, "connector"),
        clock.wrap_method(tuner.hypernetwork, "generate_for_layer", "hypernet"),
    ):
        clock.start("factors")
        factors = tuner.generate_lora_factors(inputs)
        clock.stop("factors")
    clock.start("export")
    state_dict = factors_to_state_dicts(factors)[0]
    check_finite(state_dict, "generated adapter")
    clock.stop("export")
    t = clock.totals
    stages = {
        "decode": t["decode"],
        "processor": t["processor"],
        "vision": t["vision"] + t.get("connector", 0.0),
        "text": t["factors"] - t["vision"] - t.get("connector", 0.0) - t["hypernet"],
        "hypernet": t["hypernet"],
        "export": t["export"],
    }
    stages["total"] = sum(stages[s] for s in STAGES)
    return stages, state_dict


def plain_forward(vlm, inputs, device: str, body_only: bool) -> dict[str, float]:
    clock = common.StageClock(device)
    body = vlm.model
    with (
        torch.no_grad(),
        clock.hook_module(body.vision_model, "vision"),
        clock.hook_module(body.connector, "connector"),
    ):
        clock.start("total")
        if body_only:
            body(**inputs, use_cache=False)
        else:
            vlm(**inputs, use_cache=False)
        clock.stop("total")
    t = clock.totals
    return {
        "total": t["total"],
        "vision": t["vision"] + t.get("connector", 0.0),
        "text_and_head": t["total"] - t["vision"] - t.get("connector", 0.0),
    }


def profile_generate_adapter(model, path: Path, rows: int = 20) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        model.generate_adapter(str(path))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(table)
    return table


def run_point(args, built, arch: str, frames: int, video_dir: Path) -> dict:
    import peft_hyper

    tuner, vlm, device = built["tuner"], built["vlm"], args.device
    path = common.make_video(video_dir, arch, frames, args.seed)
    inputs = tuner.hypernetwork_inputs([peft_hyper.load_video(path, num_frames=frames)])
    record = {
        "arch": arch,
        "frames": frames,
        "tokens": int(inputs["input_ids"].shape[1]),
        "visual_tokens": common.visual_tokens(inputs, built["config"]),
        "hypernet_layers": len(tuner.hypernetwork.layers),
        "text_layers": built["config"].text_config.num_hidden_layers,
        "hypernet_params": sum(p.numel() for p in tuner.hypernetwork.parameters()),
    }
    runs = {"internalize": [], "forward": [], "body": []}
    cpu = {"internalize": [], "forward": [], "body": []}
    peaks = {"internalize": [], "forward": [], "body": []}
    for _ in range(args.repeats):  # interleaved, so that every run of a repeat sees similar machine load
        with common.PeakMemory(device) as mem:
            c0 = common.cpu_seconds()
            stages, _ = staged_generate_adapter(tuner, path, frames, device)
            cpu["internalize"].append(common.cpu_seconds() - c0)
        runs["internalize"].append(stages)
        peaks["internalize"].append(mem.delta_mib)
        for name, body_only in (("forward", False), ("body", True)):
            with common.PeakMemory(device) as mem:
                c0 = common.cpu_seconds()
                runs[name].append(plain_forward(vlm, inputs, device, body_only))
                cpu[name].append(common.cpu_seconds() - c0)
            peaks[name].append(mem.delta_mib)
        print(
            f"[{arch} {frames}f] internalize {stages['total']:.2f} s "
            f"({', '.join(f'{s} {stages[s]:.2f}' for s in STAGES)}); forward {runs['forward'][-1]['total']:.2f} s; "
            f"body {runs['body'][-1]['total']:.2f} s",
            flush=True,
        )
    med = {name: {key: common.median([r[key] for r in rs]) for key in rs[0]} for name, rs in runs.items()}
    record.update(
        {
            "stages_s": med["internalize"],
            "stages_runs": runs["internalize"],
            "forward_s": med["forward"],
            "body_s": med["body"],
            "forward_runs": runs["forward"],
            "body_runs": runs["body"],
            "cpu_s": {k: common.summary(v) for k, v in cpu.items()},
            "peak_mib": {k: common.summary(v) for k, v in peaks.items()},
        }
    )
    total = med["internalize"]["total"]
    paired_forward = [i["total"] / f["total"] for i, f in zip(runs["internalize"], runs["forward"], strict=True)]
    paired_body = [i["total"] / b["total"] for i, b in zip(runs["internalize"], runs["body"], strict=True)]
    record.update(
        {
            "internalize_s": total,
            "ratio_vs_forward": common.median(paired_forward),
            "ratio_vs_body": common.median(paired_body),
            "cpu_ratio_vs_forward": common.median(cpu["internalize"]) / common.median(cpu["forward"]),
            "hypernet_fraction": med["internalize"]["hypernet"] / total,
            "vision_fraction": med["internalize"]["vision"] / total,
            "goal_1_15x_met": common.median(paired_forward) <= 1.15,
            "peak_internalize_mib": common.median(peaks["internalize"]),
            "peak_forward_mib": common.median(peaks["forward"]),
            "peak_body_mib": common.median(peaks["body"]),
        }
    )
    for stage in STAGES:
        record[f"{stage}_s"] = med["internalize"][stage]
    record["forward_total_s"] = med["forward"]["total"]
    record["body_total_s"] = med["body"]["total"]
    return record


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0], ["500M"], [16], 1)
    parser.add_argument("--profile", action="store_true", help="also profile one generate_adapter (torch.profiler)")
    args = parser.parse_args()
    common.setup(args)
    result = {
        "benchmark": "internalize_cost",
        "args": vars(args),
        "machine": common.machine_info(args.device),
        "points": [],
    }
    with tempfile.TemporaryDirectory() as video_dir:
        for arch in args.arch:
            built = common.build(arch, max(args.frames), args.device, args.dtype, args.seed)
            # Warm-up on the smallest point (one-off allocator / kernel-selection costs; not timed).
            warm = common.make_video(Path(video_dir), arch, min(args.frames), args.seed)
            built["model"].generate_adapter(str(warm), num_frames=1)
            for frames in args.frames:
                result["points"].append(run_point(args, built, arch, frames, Path(video_dir)))
            if args.profile:
                path = common.make_video(Path(video_dir), arch, min(args.frames), args.seed)
                result.setdefault("profiles", {})[arch] = profile_generate_adapter(built["model"], path)
            del built
    rows = result["points"]
    result["table_time"] = common.print_table(
        rows,
        [
            ("arch", "arch"),
            ("frames", "frames"),
            ("tokens", "tokens"),
            ("decode_s", "decode"),
            ("processor_s", "processor"),
            ("vision_s", "vision+connector"),
            ("text_s", "text layers"),
            ("hypernet_s", "hypernetwork"),
            ("export_s", "export"),
            ("internalize_s", "internalize total"),
            ("forward_total_s", "plain forward (lm head)"),
            ("body_total_s", "body forward"),
            ("ratio_vs_forward", "internalize / forward"),
            ("ratio_vs_body", "internalize / body"),
            ("hypernet_fraction", "hypernet share"),
        ],
        title=f"Internalization cost, seconds ({args.device}, {args.dtype}, median of {args.repeats})",
    )
    result["table_memory"] = common.print_table(
        rows,
        [
            ("arch", "arch"),
            ("frames", "frames"),
            ("peak_internalize_mib", "internalize peak Δ (MiB)"),
            ("peak_forward_mib", "forward peak Δ (MiB)"),
            ("peak_body_mib", "body peak Δ (MiB)"),
            ("cpu_ratio_vs_forward", "CPU-time ratio internalize / forward"),
            ("goal_1_15x_met", "≤ 1.15× forward"),
        ],
        title="Internalization peak memory above the pre-call level",
    )
    common.finish(result, common.output_path(args, "internalize_cost"))


if __name__ == "__main__":
    main()
