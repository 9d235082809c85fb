"""Does a long composition need its segments scaled? (an experiment; not an option of `compose_adapters` yet)

    python examples/long_video/segment_scaling.py --model CHECKPOINT --data outputs/eval/long/192/dataset --videos 6

Composing K segments' adapters by concatenating their ranks sums their ΔW, which grows with K. For each long video
this scales every segment's generated ranks (the B columns before the bias block) by 1 (the sum, as shipped), 1/√K
or 1/K before composing, answers the video's questions with each, and prints exact match per question kind.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from datasets import load_from_disk

from peft_hyper.cli import load_model
from peft_hyper.testing.long_world import render_long_spec_video

SCALINGS = {"sum": lambda k: 1.0, "sqrt": lambda k: k**-0.5, "mean": lambda k: 1.0 / k}


def scaled(parts: list[dict[str, torch.Tensor]], rank: int, factor: float) -> list[dict[str, torch.Tensor]]:
    """The parts with their generated ranks' B columns (`[:, :rank]`) multiplied by `factor`; bias blocks kept."""
    out = []
    for part in parts:
        part = dict(part)
        for key in [k for k in part if ".lora_B." in k]:
            part[key] = torch.cat([part[key][:, :rank] * factor, part[key][:, rank:]], dim=1)
        out.append(part)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded one)")
    parser.add_argument("--data", required=True, help="a saved long-world dataset (make_long_eval_sets.py)")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--segment-frames", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the summary as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuner = load_model(args.model).base_model
    rank = tuner.hyper_config.r
    rows = [row for row in load_from_disk(args.data) if row["task_type"] != "caption"]
    specs = list(dict.fromkeys(row["spec"] for row in rows))[: args.videos]
    hits: dict[str, dict[str, list[bool]]] = {name: defaultdict(list) for name in SCALINGS}
    for spec in specs:
        questions = [row for row in rows if row["spec"] == spec]
        video = render_long_spec_video(spec, questions[0]["num_frames"], questions[0]["size"])
        parts = tuner.generate_segment_adapters(video, args.segment_frames)
        for name, factor in SCALINGS.items():
            composed = tuner.compose_adapters(scaled(parts, rank, factor(len(parts))))
            tuner.load_generated_adapter(composed, "scaling")
            answers = tuner.answer([q["prompt"] for q in questions], adapter_names="scaling")
            for answer, question in zip(answers, questions, strict=True):
                hits[name][question["task_type"]].append(answer.lower() == question["target"].lower())
    summary = {"model": args.model or "embedded", "data": args.data, "videos": len(specs), "scalings": {}}
    for name, kinds in hits.items():
        every = [hit for values in kinds.values() for hit in values]
        summary["scalings"][name] = {
            "all": sum(every) / len(every),
            "n": len(every),
            **{kind: sum(v) / len(v) for kind, v in sorted(kinds.items())},
        }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
