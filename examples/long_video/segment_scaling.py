"""Which `segment_scaling` holds a long composition? (the experiment behind `HyperLoraConfig.segment_scaling`)

    python examples/long_video/segment_scaling.py --model CHECKPOINT --data outputs/eval/long/192/dataset --videos 6

Composing K segments' adapters by concatenating their ranks sums their ΔW, which grows with K. For each long video
this composes the segments' adapters under every scaling of `compose_adapters` — each segment's generated ranks
weighted by 1 (`sum`), 1/√K (`sqrt`) or 1/K (`mean`), whatever the checkpoint's own `segment_scaling` — answers the
video's questions with each, and prints exact match per question kind.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from datasets import load_from_disk

from peft_hyper import compose_adapters
from peft_hyper.cli import load_model
from peft_hyper.composition import SEGMENT_SCALINGS
from peft_hyper.testing.long_world import render_long_spec_video


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
    rows = [row for row in load_from_disk(args.data) if row["task_type"] != "caption"]
    specs = list(dict.fromkeys(row["spec"] for row in rows))[: args.videos]
    hits: dict[str, dict[str, list[bool]]] = {name: defaultdict(list) for name in SEGMENT_SCALINGS}
    for spec in specs:
        questions = [row for row in rows if row["spec"] == spec]
        video = render_long_spec_video(spec, questions[0]["num_frames"], questions[0]["size"])
        parts = tuner.generate_segment_adapters(video, args.segment_frames)
        for name in SEGMENT_SCALINGS:
            composed = compose_adapters(parts, bias_rank=tuner.hyper_config.bias_rank, scaling=name)
            tuner.load_generated_adapter(composed, "scaling")
            answers = tuner.answer([q["prompt"] for q in questions], adapter_names="scaling")
            for answer, question in zip(answers, questions, strict=True):
                hits[name][question["task_type"]].append(answer.lower() == question["target"].lower())
    summary = {"model": args.model or "embedded", "data": args.data, "videos": len(specs), "scalings": {}}
    summary["trained_with"] = tuner.hyper_config.segment_scaling
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
