"""What capping a composed adapter's rank costs (serving engines cap LoRA rank: vLLM's `max_lora_rank` <= 512).

    python examples/long_video/rank_cap.py --model CHECKPOINT --data outputs/eval/long/1024/dataset --videos 5 \
        --caps 512 256 64 16 --out docs/results/long-videos/rank-cap-1024.json

For each long video: the composed adapter of its `--segment-frames` segments (rank `K·r + r_b`), then the same capped
at each of `--caps` (`generate_adapter(..., max_rank=)`: the best rank-R approximation of each module's ΔW). Reports
the relative Frobenius error of the cap per module (`composition.truncation_errors`: mean and max), the share of
answers identical to the uncapped adapter's, and exact match for each.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from peft_hyper.composition import truncation_errors  # noqa: E402


def main() -> None:
    parser = common.parser(__doc__, videos=5)
    parser.add_argument("--caps", type=int, nargs="+", default=[512, 256, 64, 16])
    args = parser.parse_args()
    tuner = common.load_tuner(args)
    errors: dict[int, list[float]] = defaultdict(list)
    same: dict[int, int] = defaultdict(int)
    hits: dict[str, int] = defaultdict(int)
    total, rank = 0, None
    specs = 0
    for _, video, questions in common.videos_and_questions(args):
        specs += 1
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
        "videos": specs,
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
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
