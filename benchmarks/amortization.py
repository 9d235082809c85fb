"""Amortization: K questions about one video.

  in-context      K × (video + question prefill): every question re-reads the video (no cache reuse)
  prefix cache    one prefill of the video prefix, kept as a KV cache, + K × question prefill over that cache
  adapter         internalize once (decode + processor + VLM forward + hypernetwork + load) + K × adapter-only query

Each question costs its TTFT (prefill + first token). The video prefill is measured once, split at the end of the
shared prefix (the video tokens) so the same run gives all three paths: in-context TTFT = prefix + suffix (≈ one
prefill of the whole prompt; ttft.py times that directly). The KV-cache baseline is the honest competitor when the
video can stay resident: it is reported together with its memory (KV bytes) next to the adapter's bytes. Example:

    python benchmarks/amortization.py --arch 500M --frames 16 --repeats 3
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QUESTIONS = [
    "What happens in the video? Describe it in one sentence.",
    "What colour is the square?",
    "In which direction does the object move?",
    "How many objects are there?",
    "What is in the background?",
    "What happens at the end of the video?",
    "Is the camera moving?",
]
KS = (1, 2, 3, 5, 10, 20, 50, 100)


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.shape[-1], b.shape[-1])
    diff = (a[0, :n] != b[0, :n]).nonzero()
    return int(diff[0]) if len(diff) else n


def break_even(fixed_a: float, per_a: float, fixed_b: float, per_b: float) -> int | None:
    """Smallest K >= 1 with fixed_b + K·per_b <= fixed_a + K·per_a (path b pays off), or None if never."""
    for k in range(1, 100_001):
        if fixed_b + k * per_b <= fixed_a + k * per_a:
            return k
        if per_b >= per_a and k > 1:
            return None
    return None


def run_arch(args, arch: str, frames: int, video_dir: Path) -> dict:
    import peft_hyper

    built = common.build(arch, frames, args.device, args.dtype, args.seed)
    vlm, processor, model = built["vlm"], built["processor"], built["model"]
    dtype, device = common.DTYPES[args.dtype], args.device
    path = common.make_video(video_dir, arch, frames, args.seed)
    video = peft_hyper.load_video(path, num_frames=frames)
    questions = QUESTIONS[: max(2, args.questions)]
    full = [common.query_inputs(processor, video, device, dtype, q) for q in questions]
    texts = [common.query_inputs(processor, None, device, dtype, q) for q in questions]
    prefix_len = min(common_prefix_length(full[0]["input_ids"], f["input_ids"]) for f in full[1:])
    prefix = {k: v for k, v in full[0].items() if k != "input_ids" and k != "attention_mask"}
    prefix["input_ids"] = full[0]["input_ids"][:, :prefix_len]
    prefix["attention_mask"] = full[0]["attention_mask"][:, :prefix_len]
    assert common.visual_tokens({"input_ids": prefix["input_ids"]}, built["config"]) == common.visual_tokens(
        full[0], built["config"]
    ), "the split must keep every visual token in the prefix"

    with torch.no_grad():
        vlm.generate(**texts[0], max_new_tokens=1, do_sample=False)  # warm-up

        def prefill_prefix():
            out = vlm(**prefix, use_cache=True, logits_to_keep=1)
            return out.past_key_values

        def ask_cached(cache, inputs):
            suffix = inputs["input_ids"][:, prefix_len:]
            mask = torch.ones(1, prefix_len + suffix.shape[1], dtype=torch.long, device=device)
            out = vlm(input_ids=suffix, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1)
            cache.crop(-suffix.shape[1])  # back to the video prefix for the next question
            return token

        prefix_walls, suffix_walls = [], []
        cache = None
        for _ in range(args.repeats_video):
            wall, _, cache = common.timed(prefill_prefix, device)
            prefix_walls.append(wall)
        for _ in range(args.repeats):
            for inputs in full:
                suffix_walls.append(common.timed(lambda c=cache, x=inputs: ask_cached(c, x), device)[0])
        kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        del cache

        internalize_walls = []
        for _ in range(args.repeats_video):  # first call injects LoRA layers; later ones hot-swap the same name
            wall, _, state_dict = common.timed(lambda: model.internalize(str(path), adapter_name="video"), device)
            internalize_walls.append(wall)
        adapter_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
        adapter_walls = []
        model.generate(**texts[0], max_new_tokens=1, do_sample=False)  # warm-up of the LoRA path
        for _ in range(args.repeats):
            for inputs in texts:
                adapter_walls.append(
                    common.timed(lambda x=inputs: model.generate(**x, max_new_tokens=1, do_sample=False), device)[0]
                )

    t_prefix, t_suffix = common.median(prefix_walls), common.median(suffix_walls)
    t_internalize, t_adapter = common.median(internalize_walls), common.median(adapter_walls)
    t_in_context = t_prefix + t_suffix
    rows = []
    for k in KS:
        rows.append(
            {
                "arch": arch,
                "frames": frames,
                "K": k,
                "in_context_s": k * t_in_context,
                "prefix_cache_s": t_prefix + k * t_suffix,
                "adapter_s": t_internalize + k * t_adapter,
                "speedup_vs_in_context": k * t_in_context / (t_internalize + k * t_adapter),
                "speedup_vs_prefix_cache": (t_prefix + k * t_suffix) / (t_internalize + k * t_adapter),
            }
        )
    record = {
        "arch": arch,
        "frames": frames,
        "prompt_tokens": int(full[0]["input_ids"].shape[1]),
        "prefix_tokens": prefix_len,
        "visual_tokens": common.visual_tokens(full[0], built["config"]),
        "video_prefix_s": common.summary(prefix_walls),
        "question_over_cache_s": common.summary(suffix_walls),
        "internalize_s": common.summary(internalize_walls),
        "adapter_query_s": common.summary(adapter_walls),
        "in_context_query_s": t_in_context,
        "video_prefix_median_s": t_prefix,
        "question_over_cache_median_s": t_suffix,
        "internalize_median_s": t_internalize,
        "adapter_query_median_s": t_adapter,
        "break_even_vs_in_context": break_even(0.0, t_in_context, t_internalize, t_adapter),
        "break_even_vs_prefix_cache": break_even(t_prefix, t_suffix, t_internalize, t_adapter),
        "kv_cache_mib": kv_bytes / 2**20,
        "adapter_mib": adapter_bytes / 2**20,
        "asymptotic_speedup_vs_in_context": t_in_context / t_adapter,
        "asymptotic_speedup_vs_prefix_cache": t_suffix / t_adapter,
        "rows": rows,
    }
    print(
        f"[{arch} {frames}f] video prefix {t_prefix:.2f} s, question over cache {t_suffix:.3f} s, internalize "
        f"{t_internalize:.2f} s, adapter query {t_adapter:.3f} s",
        flush=True,
    )
    return record


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0], ["500M"], [16], 3)
    parser.add_argument("--repeats-video", type=int, default=1, help="repeats of the heavy video prefill/internalize")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="distinct questions (>= 2)")
    args = parser.parse_args()
    common.setup(args)
    result = {
        "benchmark": "amortization",
        "args": vars(args),
        "machine": common.machine_info(args.device),
        "points": [],
    }
    with tempfile.TemporaryDirectory() as video_dir:
        for arch in args.arch:
            for frames in args.frames:
                result["points"].append(run_arch(args, arch, frames, Path(video_dir)))
    rows = [row for point in result["points"] for row in point["rows"]]
    result["table_summary"] = common.print_table(
        result["points"],
        [
            ("arch", "arch"),
            ("frames", "frames"),
            ("in_context_query_s", "in-context query (s)"),
            ("video_prefix_median_s", "video prefix (s)"),
            ("question_over_cache_median_s", "question over KV cache (s)"),
            ("internalize_median_s", "internalize (s)"),
            ("adapter_query_median_s", "adapter query (s)"),
            ("break_even_vs_in_context", "break-even K vs in-context"),
            ("break_even_vs_prefix_cache", "break-even K vs KV prefix cache"),
            ("kv_cache_mib", "KV cache (MiB)"),
            ("adapter_mib", "adapter (MiB)"),
        ],
        title=f"Amortization summary ({args.device}, {args.dtype})",
    )
    result["table"] = common.print_table(
        rows,
        [
            ("arch", "arch"),
            ("frames", "frames"),
            ("K", "K"),
            ("in_context_s", "K × in-context (s)"),
            ("prefix_cache_s", "prefix cache (s)"),
            ("adapter_s", "internalize + K × adapter (s)"),
            ("speedup_vs_in_context", "speed-up vs in-context"),
            ("speedup_vs_prefix_cache", "speed-up vs prefix cache"),
        ],
        title="Total time for K questions",
    )
    common.finish(result, common.output_path(args, "amortization"))


if __name__ == "__main__":
    main()
