"""Query time-to-first-token (TTFT): video in context vs a generated adapter vs the bare text-only model.

TTFT here = `generate(**inputs, max_new_tokens=1, do_sample=False)`: the prefill over the whole prompt (vision tower
and connector included when the video is in context) plus the first decoding step's token choice. Paths:

* video   — the bare VLM (no LoRA layers injected yet) with the video and the question in context;
* text    — the bare VLM with the question only (the ceiling: what a query costs when nothing is in context);
* adapter — the question only, with a generated adapter active (PEFT LoRA layers, unmerged);
* merged  — the same adapter merged into the weights with PEFT `merge_adapter` (then `unmerge_adapter`);
* disabled — the question only with LoRA layers injected but disabled (the wrapper's own overhead).

The adapter-only query does not depend on the video length; its adapter has the exact shape a generated one has
(rank r + bias_rank on every target) and is loaded with `load_generated_adapter`; its values are random (the
internalization cost is measured by internalize_cost.py). Example:

    python benchmarks/ttft.py --arch 256M 500M --frames 4 16 64 --repeats 3
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def random_adapter(tuner, seed: int = 0) -> dict[str, torch.Tensor]:
    """A PEFT LoRA state dict of the generated shape (random values)."""
    from peft_hyper.lora import lora_state_dict_keys

    generator = torch.Generator().manual_seed(seed)
    rank = tuner.hyper_config.total_rank
    device = next(tuner.model.parameters()).device
    state_dict = {}
    for target in tuner.hypernetwork.targets:
        key_a, key_b = lora_state_dict_keys(target.name)
        state_dict[key_a] = (torch.randn(rank, target.in_features, generator=generator) * 0.02).to(device)
        state_dict[key_b] = (torch.randn(target.out_features, rank, generator=generator) * 0.02).to(device)
    return state_dict


def count_lora_layers(module: torch.nn.Module) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in module.modules())


def ttft(generate, inputs, device, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu, out = common.timed(lambda: generate(**inputs, max_new_tokens=1, do_sample=False), device)
        walls.append(wall)
        cpus.append(cpu)
    return walls, cpus


def run_arch(args, arch: str, video_dir: Path) -> dict:
    import peft_hyper

    max_frames = max(args.frames)
    built = common.build(arch, max_frames, args.device, args.dtype, args.seed)
    vlm, processor, model, tuner = built["vlm"], built["processor"], built["model"], built["tuner"]
    dtype = common.DTYPES[args.dtype]
    text_inputs = common.query_inputs(processor, None, args.device, dtype)
    cheap = max(args.repeats, args.cheap_repeats)

    # Warm-up (first call pays one-off costs: allocator, oneDNN kernel selection).
    ttft(vlm.generate, text_inputs, args.device, 1)

    points = []
    text_walls, text_cpus = [], []
    for frames in args.frames:
        cap = args.max_video_frames.get(arch) if args.max_video_frames else None
        video = peft_hyper.load_video(common.make_video(video_dir, arch, frames, args.seed), num_frames=frames)
        inputs = common.query_inputs(processor, video, args.device, dtype)
        point = {
            "arch": arch,
            "frames": frames,
            "visual_tokens": common.visual_tokens(inputs, built["config"]),
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "text_prompt_tokens": int(text_inputs["input_ids"].shape[1]),
        }
        if cap is not None and frames > cap:
            point["video_skipped"] = f"capped at {cap} frames for {arch} (compute budget)"
            print(f"[{arch}] {frames} frames: video-in-context skipped ({point['video_skipped']})", flush=True)
        else:
            repeats = args.repeats if frames <= args.full_repeat_frames else 1
            walls, cpus = [], []
            for _ in range(repeats):  # interleave with text-only queries: both see the same machine load
                w, c = ttft(vlm.generate, inputs, args.device, 1)
                walls += w
                cpus += c
                w, c = ttft(vlm.generate, text_inputs, args.device, 1)
                text_walls += w
                text_cpus += c
            point["video_s"] = common.summary(walls)
            point["video_cpu_s"] = common.summary(cpus)
            print(
                f"[{arch}] {frames} frames: video-in-context TTFT {common.median(walls):.2f} s "
                f"(cpu {common.median(cpus):.2f} s, {point['visual_tokens']} visual tokens)",
                flush=True,
            )
        points.append(point)
        del inputs, video

    w, c = ttft(vlm.generate, text_inputs, args.device, cheap)
    text_walls += w
    text_cpus += c

    # Inject LoRA layers once with an adapter of the generated shape.
    before = count_lora_layers(vlm)
    load_wall, _, _ = common.timed(lambda: tuner.load_generated_adapter(random_adapter(tuner), "a"), args.device)
    lora_layers = count_lora_layers(vlm)
    ttft(model.generate, text_inputs, args.device, 1)  # warm-up with the LoRA path
    adapter_walls, adapter_cpus = ttft(model.generate, text_inputs, args.device, cheap)
    merge_wall, _, _ = common.timed(tuner.merge_adapter, args.device)
    merged_walls, merged_cpus = ttft(model.generate, text_inputs, args.device, cheap)
    unmerge_wall, _, _ = common.timed(tuner.unmerge_adapter, args.device)
    tuner.set_adapter(tuner.active_hypernetwork)  # generated adapters disabled, LoRA layers still injected
    disabled_walls, disabled_cpus = ttft(model.generate, text_inputs, args.device, cheap)
    # A second round of the unmerged adapter, after the others, to bracket drifts in machine load.
    tuner.set_adapter("a")
    w, c = ttft(model.generate, text_inputs, args.device, cheap)
    adapter_walls += w
    adapter_cpus += c

    shared = {
        "text_s": common.summary(text_walls),
        "text_cpu_s": common.summary(text_cpus),
        "adapter_s": common.summary(adapter_walls),
        "adapter_cpu_s": common.summary(adapter_cpus),
        "merged_s": common.summary(merged_walls),
        "merged_cpu_s": common.summary(merged_cpus),
        "disabled_s": common.summary(disabled_walls),
        "disabled_cpu_s": common.summary(disabled_cpus),
        "first_load_s": load_wall,
        "merge_s": merge_wall,
        "unmerge_s": unmerge_wall,
        "lora_layers_before": before,
        "lora_layers": lora_layers,
        "adapter_rank": tuner.hyper_config.total_rank,
        "params": sum(p.numel() for p in vlm.parameters()),
    }
    for point in points:
        point.update({k: shared[k]["median"] for k in ("text_s", "adapter_s", "merged_s", "disabled_s")})
        video = point.get("video_s", {}).get("median") if "video_s" in point else None
        point["video_median_s"] = video
        for key in ("text_s", "adapter_s", "merged_s"):
            point[f"speedup_vs_{key[:-2]}"] = video / point[key] if video else None
        point["adapter_over_text"] = point["adapter_s"] / point["text_s"]
        point["merged_over_text"] = point["merged_s"] / point["text_s"]
    return {"arch": arch, "points": points, "shared": shared}


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0], ["256M", "500M"], [4, 16, 64], 2)
    parser.add_argument("--cheap-repeats", type=int, default=7, help="repeats of the fast (text/adapter) queries")
    parser.add_argument(
        "--full-repeat-frames",
        type=int,
        default=16,
        help="video points above this many frames are timed once (compute budget)",
    )
    parser.add_argument(
        "--max-video-frames", nargs="*", default=[], help="per-arch cap on the video-in-context path, e.g. 500M=16"
    )
    args = parser.parse_args()
    args.max_video_frames = {k: int(v) for k, v in (item.split("=") for item in args.max_video_frames)}
    common.setup(args)
    result = {
        "benchmark": "ttft",
        "args": vars(args),
        "machine": common.machine_info(args.device),
        "ttft_definition": "generate(max_new_tokens=1, do_sample=False): prefill + first token",
        "archs": [],
    }
    rows = []
    with tempfile.TemporaryDirectory() as video_dir:
        for arch in args.arch:
            arch_result = run_arch(args, arch, Path(video_dir))
            result["archs"].append(arch_result)
            rows += arch_result["points"]
    result["points"] = rows
    result["table"] = common.print_table(
        rows,
        [
            ("arch", "arch"),
            ("frames", "frames"),
            ("visual_tokens", "visual tokens"),
            ("prompt_tokens", "prompt tokens"),
            ("video_median_s", "video in context (s)"),
            ("adapter_s", "adapter, unmerged (s)"),
            ("merged_s", "adapter, merged (s)"),
            ("text_s", "text only (s)"),
            ("speedup_vs_adapter", "video / adapter"),
            ("speedup_vs_merged", "video / merged"),
            ("speedup_vs_text", "video / text (ceiling)"),
            ("adapter_over_text", "adapter / text"),
        ],
        title=f"Query TTFT ({args.device}, {args.dtype}, median)",
    )
    for arch_result in result["archs"]:
        s = arch_result["shared"]
        print(
            f"[{arch_result['arch']}] LoRA layers injected: {s['lora_layers']} (rank {s['adapter_rank']}); "
            f"first load {s['first_load_s'] * 1e3:.0f} ms, merge {s['merge_s'] * 1e3:.0f} ms, unmerge "
            f"{s['unmerge_s'] * 1e3:.0f} ms; disabled-LoRA text query {s['disabled_s']['median']:.3f} s"
        )
    common.finish(result, common.output_path(args, "ttft"))


if __name__ == "__main__":
    main()
