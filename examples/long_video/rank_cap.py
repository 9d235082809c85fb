"""What capping a composed adapter's rank costs (serving engines cap LoRA rank: vLLM's `max_lora_rank` <= 512).

    python examples/long_video/rank_cap.py --model CHECKPOINT --data outputs/eval/long/1024/dataset --videos 5 \
        --caps 512 256 64 16 --out docs/results/long-videos/rank-cap-1024.json

For each long video: the composed adapter of its `--segment-frames` segments (rank `K·r + r_b`), then the same capped
at each of `--caps` (`generate_adapter(..., max_rank=)`: the best rank-R approximation of each module's ΔW). Reports
the relative Frobenius error of the cap per module (`composition.truncation_errors`: mean and max), the share of
answers identical to the uncapped adapter's, and exact match for each.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from datasets import load_from_disk

from peft_hyper.cli import load_model
from peft_hyper.composition import truncation_errors
from peft_hyper.testing.long_world import render_long_spec_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded one)")
    parser.add_argument("--data", required=True, help="a saved long-world dataset (make_long_eval_sets.py)")
    parser.add_argument("--videos", type=int, default=5)
    parser.add_argument("--segment-frames", type=int, default=12)
    parser.add_argument("--caps", type=int, nargs="+", default=[512, 256, 64, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuner = load_model(args.model).base_model
    rows = [row for row in load_from_disk(args.data) if row["task_type"] != "caption"]
    specs = list(dict.fromkeys(row["spec"] for row in rows))[: args.videos]
    errors: dict[int, list[float]] = defaultdict(list)
    same: dict[int, int] = defaultdict(int)
    hits: dict[str, int] = defaultdict(int)
    total, rank = 0, None
    for spec in specs:
        questions = [row for row in rows if row["spec"] == spec]
        video = render_long_spec_video(spec, questions[0]["num_frames"], questions[0]["size"])
        full = tuner.generate_adapter(video, segment_frames=args.segment_frames)
        rank = next(v.shape[0] for k, v in full.items() if ".lora_A." in k)
        tuner.load_generated_adapter(full, "uncapped")
        prompts = [q["prompt"] for q in questions]
        reference = tuner.answer(prompts, adapter_names="uncapped")
        hits["uncapped"] += sum(a.lower() == q["target"].lower() for a, q in zip(reference, questions, strict=True))
        for cap in args.caps:
            errors[cap] += list(truncation_errors(full, cap).values())
            tuner.load_generated_adapter(tuner.compose_adapters([full], max_rank=cap), "capped")
            answers = tuner.answer(prompts, adapter_names="capped")
            same[cap] += sum(a == b for a, b in zip(answers, reference, strict=True))
            hits[str(cap)] += sum(a.lower() == q["target"].lower() for a, q in zip(answers, questions, strict=True))
        total += len(questions)
    summary = {
        "model": args.model or "embedded",
        "data": args.data,
        "videos": len(specs),
        "questions": total,
        "composed_rank": rank,
        "exact_match_uncapped": hits["uncapped"] / total,
        "caps": {
            cap: {
                "error_mean": sum(errors[cap]) / len(errors[cap]),
                "error_max": max(errors[cap]),
                "identical_answers": same[cap] / total,
                "exact_match": hits[str(cap)] / total,
            }
            for cap in args.caps
        },
    }
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
