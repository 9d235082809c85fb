"""What does composition itself cost? Segments cut at the scene boundaries, so each segment is one scene.

    python examples/long_video/scene_segments.py --model CHECKPOINT --data outputs/eval/long/192/dataset --videos 10 \
        --out docs/results/long-videos/scene-segments-192.json

The long world's scenes last 12-16 frames, so fixed 12-frame segments straddle scenes and a time cue can land in a
segment that mostly shows the next scene. Here each long video is also cut at its scenes' boundaries (what a shot
detector would give; `split_video(video, [lengths])`), and every single-scene question is answered four ways:

- `fixed`: the composition of fixed `--segment-frames` segments (what `generate_adapter(..., segment_frames=12)` does);
- `scenes`: the composition of the scene segments — all of the video's scenes in one adapter;
- `cued_scene`: the cued scene's segment alone (cut from the long video, so with its times in it), same question;
- `cued_scene_plain`: the cued scene's segment alone, asked the plain clip-world question without the time cue;
- with a checkpoint that has a segment router (`peft_hyper.routing`): `routed_fixed` / `routed_scenes`, each question
  answered with the fixed / scene segment the router picks (the composition when it says the question names no
  time), and `router_scene_accuracy`, how often the scene it picks is the cued one; `routed_scenes_by_id` keeps each
  question's hit under `routed_scenes` (id → hit), and `--scene-alone REPORT_DIR` (a `frames2lora eval` report on
  the set's `scenes` dataset) compares them, paired by question, with the scene alone's adapter answers
  (`paired_comparison`, margin 0.05: the issue's "within 0.05 of the scene alone").

`scenes` vs `cued_scene` is the cost of composing the cued scene with all the others (retrieval and interference),
with the segmentation held fixed; `fixed` vs `scenes` is the cost of segments that straddle scenes. Cross-scene
questions are answered with `fixed` and `scenes`. Prints exact match per question kind and writes a JSON summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import json  # noqa: E402

import common  # noqa: E402
import torch  # noqa: E402

from peft_hyper.evaluation.statistics import paired_comparison  # noqa: E402
from peft_hyper.routing import choose_segments  # noqa: E402
from peft_hyper.testing.long_world import LongVideoSpec  # noqa: E402

CONDITIONS = ("fixed", "scenes", "cued_scene", "cued_scene_plain")
ROUTED = ("routed_fixed", "routed_scenes")


def versus_scene_alone(routed: dict[str, bool], report_dir: str) -> dict:
    """`routed_scenes` vs the scene alone's `adapter` answers of a `frames2lora eval` report, paired by question id."""
    report = json.loads((Path(report_dir) / "results.json").read_text())
    key = next(key for key in report["predictions"] if key.startswith("adapter@"))
    alone = {
        row["id"]: common.exact_match(row["prediction"], row["references"][0]) for row in report["predictions"][key]
    }
    ids = [i for i in routed if i in alone]
    result = paired_comparison([float(routed[i]) for i in ids], [float(alone[i]) for i in ids], margin=0.05)
    print(
        f"routed_scenes {result.mean_candidate:.3f} vs scene alone {result.mean_baseline:.3f} on {len(ids)} questions:"
    )
    low, high = result.ci_t
    print(f"  Δ {result.mean_delta:+.3f} [{low:+.3f}, {high:+.3f}], non-inferior at 0.05: {result.non_inferior}")
    return {"n": len(ids), **result.to_dict()}


def main() -> None:
    parser = common.parser(__doc__, videos=10)
    parser.add_argument("--scene-alone", help="a frames2lora eval report dir on the scenes set, to pair with")
    args = parser.parse_args()
    tuner = common.load_tuner(args)
    routing = tuner.router is not None
    hits = common.new_hits(CONDITIONS + (ROUTED if routing else ()))
    picked_cued: list[bool] = []
    routed_by_id: dict[str, bool] = {}

    def answer(adapter: dict, prompts: list[str]) -> list[str]:
        tuner.load_generated_adapter(adapter, "scene_segments")
        return tuner.answer(prompts, adapter_names="scene_segments")

    for spec, video, questions in common.videos_and_questions(args):
        lengths = [scene.num_frames for scene in LongVideoSpec.from_json(spec).scenes]
        prompts = [q["prompt"] for q in questions]
        fixed_parts = tuner.generate_segment_adapters(video, args.segment_frames, num_frames=video.num_frames)
        fixed = tuner.compose_adapters(fixed_parts)  # = generate_adapter(video, segment_frames=...)
        common.score(hits, "fixed", questions, answer(fixed, prompts))
        scenes = tuner.generate_segment_adapters(video, lengths, num_frames=video.num_frames)
        composed_scenes = tuner.compose_adapters(scenes)
        common.score(hits, "scenes", questions, answer(composed_scenes, prompts))
        if routing:
            times = torch.tensor(video.metadata.timestamps)
            starts = LongVideoSpec.from_json(spec).scene_starts
            for name, parts, composed, segment_starts in (
                ("routed_fixed", fixed_parts, fixed, times[:: args.segment_frames]),
                ("routed_scenes", scenes, composed_scenes, times[starts]),
            ):
                choices = choose_segments(tuner.segment_probabilities(prompts, times, segment_starts))
                for question, choice in zip(questions, choices, strict=True):
                    adapter = composed if choice is None else parts[choice]
                    by_id = routed_by_id if name == "routed_scenes" else None
                    common.score(hits, name, [question], answer(adapter, [question["prompt"]]), by_id)
                    if name == "routed_scenes" and question["scene_index"] is not None:
                        picked_cued.append(choice == question["scene_index"])
        for question in (q for q in questions if q["scene_index"] is not None):
            alone = scenes[question["scene_index"]]
            common.score(hits, "cued_scene", [question], answer(alone, [question["prompt"]]))
            common.score(hits, "cued_scene_plain", [question], answer(alone, [question["scene_prompt"]]))
    extra = {}
    if picked_cued:
        extra = {"router_scene_accuracy": sum(picked_cued) / len(picked_cued), "routed_scenes_by_id": routed_by_id}
        if args.scene_alone:
            extra["routed_scenes_vs_scene_alone"] = versus_scene_alone(routed_by_id, args.scene_alone)
    common.summarise(hits, args, **extra)


if __name__ == "__main__":
    main()
