"""Which `segment_scaling` holds a long composition? (the experiment behind `HyperLoraConfig.segment_scaling`)

    python examples/long_video/segment_scaling.py --model CHECKPOINT --data outputs/eval/long/192/dataset --videos 6

Composing K segments' adapters by concatenating their ranks sums their ΔW, which grows with K. For each long video
this composes the segments' adapters under every scaling of `compose_adapters` — each segment's generated ranks
weighted by 1 (`sum`), 1/√K (`sqrt`) or 1/K (`mean`), whatever the checkpoint's own `segment_scaling` — answers the
video's questions with each, and prints exact match per question kind.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from peft_hyper import compose_adapters  # noqa: E402
from peft_hyper.composition import SEGMENT_SCALINGS  # noqa: E402


def main() -> None:
    args = common.parser(__doc__, videos=6).parse_args()
    tuner = common.load_tuner(args)
    hits = common.new_hits(SEGMENT_SCALINGS)
    for _, video, questions in common.videos_and_questions(args):
        parts = tuner.generate_segment_adapters(video, args.segment_frames)
        for name in SEGMENT_SCALINGS:
            composed = compose_adapters(parts, bias_rank=tuner.hyper_config.bias_rank, scaling=name)
            tuner.load_generated_adapter(composed, "scaling")
            common.score(
                hits, name, questions, tuner.answer([q["prompt"] for q in questions], adapter_names="scaling")
            )
    common.summarise(hits, args, trained_with=tuner.hyper_config.segment_scaling)


if __name__ == "__main__":
    main()
