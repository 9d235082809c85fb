"""Do composed segment adapters need to know when their segment happened? (#17, "segments that know where they are")

    python examples/long_video/timestamps_ablation.py --model CHECKPOINT --data outputs/eval/long/48/dataset \
        --videos 40 --out docs/results/long-videos/timestamps-48.json

Each long video is cut into segments of `--segment-frames` (what `generate_adapter(..., segment_frames=)` does), and
the segments' adapters are composed twice: with the segments' **absolute** times (`split_video` keeps the frames'
times in the whole video, so each segment's prompt reads e.g. "Frame from 00:36") and with **relative** times (each
segment as a video of its own, stamped from 00:00). The same questions are answered greedily with each composed
adapter, and exact match per question kind is reported for both, with a paired bootstrap CI of the difference.
Questions that name a time ("in the scene at 00:40, …") or ask for an order across scenes can only be answered
from the composed adapter if the segments carry where they are; the others are the control.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from datasets import load_from_disk

from peft_hyper import load_video, split_video
from peft_hyper.cli import load_model
from peft_hyper.testing.long_world import render_long_spec_video


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded one)")
    parser.add_argument("--data", required=True, help="a saved long-world dataset (make_long_eval_sets.py)")
    parser.add_argument("--videos", type=int, default=40, help="the first N videos of the set")
    parser.add_argument("--segment-frames", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="where the JSON summary is written")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    tuner = model.base_model
    rows = [row for row in load_from_disk(args.data) if row["task_type"] != "caption"]
    by_video: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_video[row["spec"]].append(row)
    hits: dict[str, dict[str, list[int]]] = {"absolute": defaultdict(list), "relative": defaultdict(list)}
    for spec in list(by_video)[: args.videos]:
        questions = by_video[spec]
        video = render_long_spec_video(spec, questions[0]["num_frames"], questions[0]["size"])
        absolute = split_video(video, args.segment_frames)
        relative = [load_video(s.frames, num_frames=s.num_frames, source_fps=1.0) for s in absolute]
        for name, segments in (("absolute", absolute), ("relative", relative)):
            composed = tuner.compose_adapters(tuner.generate_adapter(segments))
            tuner.load_generated_adapter(composed, "ablation")
            answers = tuner.answer([q["prompt"] for q in questions], adapter_names="ablation")
            for question, answer in zip(questions, answers, strict=True):
                hits[name][question["task_type"]].append(int(answer.strip().lower() == question["target"].lower()))
    rng = np.random.default_rng(args.seed)
    summary = {"model": args.model or "embedded", "data": args.data, "videos": args.videos, "kinds": {}}
    for kind in sorted(hits["absolute"]):
        a, r = np.array(hits["absolute"][kind]), np.array(hits["relative"][kind])
        boot = [(a[i] - r[i]).mean() for i in (rng.integers(0, len(a), len(a)) for _ in range(2000))]
        summary["kinds"][kind] = {
            "n": len(a),
            "absolute": a.mean(),
            "relative": r.mean(),
            "difference": (a - r).mean(),
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        }
        print(
            f"{kind:16s} n={len(a):4d} absolute {a.mean():.3f} relative {r.mean():.3f} diff {(a - r).mean():+.3f} "
            f"[{summary['kinds'][kind]['ci95'][0]:+.3f}, {summary['kinds'][kind]['ci95'][1]:+.3f}]"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
