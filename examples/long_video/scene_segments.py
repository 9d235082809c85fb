"""What does composition itself cost? Segments cut at the scene boundaries, so each segment is one scene.

    python examples/long_video/scene_segments.py --model CHECKPOINT --data outputs/eval/long/192/dataset --videos 10 \
        --out docs/results/long-videos/scene-segments-192.json

The long world's scenes last 12-16 frames, so fixed 12-frame segments straddle scenes and a time cue can land in a
segment that mostly shows the next scene. Here each long video is also cut at its scenes' boundaries (what a shot
detector would give; `split_video(video, [lengths])`), and every single-scene question is answered four ways:

- `fixed`: the composition of fixed `--segment-frames` segments (what `generate_adapter(..., segment_frames=12)` does);
- `scenes`: the composition of the scene segments — all of the video's scenes in one adapter;
- `cued_scene`: the cued scene's segment alone (cut from the long video, so with its times in it), same question;
- `cued_scene_plain`: the cued scene's segment alone, asked the plain clip-world question without the time cue.

`scenes` vs `cued_scene` is the cost of composing the cued scene with all the others (retrieval and interference),
with the segmentation held fixed; `fixed` vs `scenes` is the cost of segments that straddle scenes. Cross-scene
questions are answered with `fixed` and `scenes`. Prints exact match per question kind and writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from datasets import load_from_disk

from peft_hyper.cli import load_model
from peft_hyper.testing.long_world import LongVideoSpec, render_long_spec_video

CONDITIONS = ("fixed", "scenes", "cued_scene", "cued_scene_plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded one)")
    parser.add_argument("--data", required=True, help="a saved long-world dataset (make_long_eval_sets.py)")
    parser.add_argument("--videos", type=int, default=10, help="the first N videos of the set")
    parser.add_argument("--segment-frames", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the summary as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuner = load_model(args.model).base_model
    rows = [row for row in load_from_disk(args.data) if row["task_type"] != "caption"]
    specs = list(dict.fromkeys(row["spec"] for row in rows))[: args.videos]
    hits: dict[str, dict[str, list[bool]]] = {name: defaultdict(list) for name in CONDITIONS}

    def answer(adapter: dict[str, torch.Tensor], prompts: list[str]) -> list[str]:
        tuner.load_generated_adapter(adapter, "scene_segments")
        return tuner.answer(prompts, adapter_names="scene_segments")

    def score(condition: str, questions: list[dict], answers: list[str]) -> None:
        for question, text in zip(questions, answers, strict=True):
            hits[condition][question["task_type"]].append(text.strip().lower() == question["target"].lower())

    for spec in specs:
        questions = [row for row in rows if row["spec"] == spec]
        video = render_long_spec_video(spec, questions[0]["num_frames"], questions[0]["size"])
        lengths = [scene.num_frames for scene in LongVideoSpec.from_json(spec).scenes]
        prompts = [q["prompt"] for q in questions]
        fixed = tuner.generate_adapter(video, num_frames=video.num_frames, segment_frames=args.segment_frames)
        score("fixed", questions, answer(fixed, prompts))
        scenes = tuner.generate_segment_adapters(video, lengths, num_frames=video.num_frames)
        score("scenes", questions, answer(tuner.compose_adapters(scenes), prompts))
        for question in (q for q in questions if q["scene_index"] is not None):
            alone = scenes[question["scene_index"]]
            score("cued_scene", [question], answer(alone, [question["prompt"]]))
            score("cued_scene_plain", [question], answer(alone, [question["scene_prompt"]]))

    summary = {"model": args.model or "embedded", "data": args.data, "videos": len(specs), "conditions": {}}
    for name, kinds in hits.items():
        every = [hit for values in kinds.values() for hit in values]
        summary["conditions"][name] = {
            "all": sum(every) / len(every),
            "n": len(every),
            **{kind: sum(v) / len(v) for kind, v in sorted(kinds.items())},
        }
    kinds = sorted({kind for by_kind in hits.values() for kind in by_kind})
    print(f"{'kind':18s}" + "".join(f"{name:>18s}" for name in CONDITIONS))
    for kind in kinds:
        cells = [hits[name].get(kind) for name in CONDITIONS]
        print(f"{kind:18s}" + "".join(f"{sum(c) / len(c):18.3f}" if c else f"{'-':>18s}" for c in cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
