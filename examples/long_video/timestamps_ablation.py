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

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from peft_hyper import load_video, split_video  # noqa: E402


def main() -> None:
    parser = common.parser(__doc__, videos=40)
    parser.add_argument("--seed", type=int, default=0, help="of the bootstrap")
    args = parser.parse_args()
    tuner = common.load_tuner(args)
    hits = common.new_hits(("absolute", "relative"))
    for _, video, questions in common.videos_and_questions(args):
        absolute = split_video(video, args.segment_frames)
        relative = [load_video(s.frames, num_frames=s.num_frames, source_fps=1.0) for s in absolute]
        for name, segments in (("absolute", absolute), ("relative", relative)):
            tuner.load_generated_adapter(tuner.compose_adapters(tuner.generate_adapter(segments)), "ablation")
            common.score(
                hits, name, questions, tuner.answer([q["prompt"] for q in questions], adapter_names="ablation")
            )
    rng = np.random.default_rng(args.seed)
    summary = {"model": args.model or "embedded", "data": args.data, "videos": args.videos, "kinds": {}}
    for kind in sorted(hits["absolute"]):
        a, r = np.array(hits["absolute"][kind], dtype=float), np.array(hits["relative"][kind], dtype=float)
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
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
