"""Write the held-out long-video evaluation sets: saved `datasets` dirs of long-world videos plus their 1-fps mp4s.

    python examples/long_video/make_long_eval_sets.py --out outputs/eval/long --scene-clips

For each length N of ``--frames`` (default 48, 192 and 1,024 frames, i.e. seconds at 1 fps), ``--out/N`` holds:

* ``dataset``: ``--videos`` long videos of the *test* split (`peft_hyper.testing.long_world.make_long_dataset`:
  seeds in the long world's own namespace, disjoint from every clip of the clip world), each exactly N frames of
  scenes of 12-16 frames (``--scenes``: a number or a ``low-high`` range per length), one row per question
  (single-scene questions with a time cue, cross-scene counts and order) plus a long caption row;
* ``videos``: the mp4s (the ``video`` column);
* with ``--scene-clips``, ``scenes/dataset`` (and ``scenes/videos``): each single-scene question in its plain
  clip-world form about its scene alone, the scene's own 12-16 frames, with the same row ``id``;
* ``summary.json``: the counts per kind and the no-video floor printed below.

A set that is already complete is kept. Each is written whole or not at all (`peft_hyper.saving.atomic_directory`).
Evaluate with the `frames2lora eval` commands printed at the end: ``--video-loader
peft_hyper.testing.long_world:render_long_spec_video`` renders each row's video from its ``spec`` column, all N
frames with ``--frames N`` (a long video is never stretched to more frames than it has).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from peft_hyper.saving import atomic_directory
from peft_hyper.testing.long_world import LongVideoSpec, kind_counts, make_long_dataset, scene_clip_dataset
from peft_hyper.testing.world import answer_prior_accuracy

LOADER = "--video-loader peft_hyper.testing.long_world:render_long_spec_video"


def scene_range(text: str) -> int | tuple[int, int]:
    """``"14"`` → 14, ``"3-4"`` → (3, 4)."""
    low, _, high = text.partition("-")
    try:
        return (int(low), int(high)) if high else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a scene count is a number or a range low-high, got {text!r}") from None


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def write_set(path: Path, num_frames: int, num_videos: int, num_scenes: int | tuple[int, int], args) -> dict:
    """Build one set into ``path`` (whole or not at all); return its summary."""
    start = time.perf_counter()
    with atomic_directory(path) as staging:
        dataset = make_long_dataset(
            num_videos,
            seed=args.seed,
            num_frames=num_frames,
            num_scenes=num_scenes,
            size=64,
            video_dir=staging / "videos",
            split="test",
            scene_questions=args.scene_questions,
            count_questions=args.count_questions,
            order_questions=args.order_questions,
            captions=not args.no_captions,
        )
        dataset.save_to_disk(str(staging / "dataset"))
        scenes = Counter(len(LongVideoSpec.from_json(spec).scenes) for spec in dict.fromkeys(dataset["spec"]))
        summary = {
            "num_frames": num_frames,
            "videos": num_videos,
            "videos_by_scene_count": dict(sorted(scenes.items())),
            "rows": len(dataset),
            "kinds": kind_counts(dataset),
            "no_video_floor": answer_prior_accuracy(dataset),
        }
        if args.scene_clips:
            clips = scene_clip_dataset(dataset, video_dir=staging / "scenes" / "videos")
            clips.save_to_disk(str(staging / "scenes" / "dataset"))
            summary["scene_clips"] = {"rows": len(clips), "frames": dict(sorted(Counter(clips["num_frames"]).items()))}
        summary["seconds"] = round(time.perf_counter() - start, 1)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/eval/long")
    parser.add_argument("--frames", type=int, nargs="+", default=[48, 192, 1024], help="frames (= seconds) per video")
    parser.add_argument("--videos", type=int, nargs="+", default=[100, 40, 20], help="videos per length")
    parser.add_argument("--scenes", type=scene_range, nargs="+", default=[(3, 4), 14, 70], help="scenes per length")
    parser.add_argument("--scene-questions", type=non_negative, default=12, help="single-scene questions per video")
    parser.add_argument(
        "--count-questions", type=non_negative, default=4, help="cross-scene count questions per video"
    )
    parser.add_argument(
        "--order-questions", type=non_negative, default=4, help="cross-scene order questions per video"
    )
    parser.add_argument("--no-captions", action="store_true", help="no long caption row per video")
    parser.add_argument("--scene-clips", action="store_true", help="also write each set's single-scene clip set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not len(args.frames) == len(args.videos) == len(args.scenes):
        parser.error("--frames, --videos and --scenes take one value per length")
    out = Path(args.out)
    for num_frames, num_videos, num_scenes in zip(args.frames, args.videos, args.scenes, strict=True):
        path = out / str(num_frames)
        done = (path / "dataset" / "dataset_info.json").is_file()
        if done and (not args.scene_clips or (path / "scenes" / "dataset" / "dataset_info.json").is_file()):
            print(f"{path} exists; kept")
            continue
        summary = write_set(path, num_frames, num_videos, num_scenes, args)
        scenes = ", ".join(f"{n} scenes: {v}" for n, v in summary["videos_by_scene_count"].items())
        print(
            f"{path}: {summary['rows']} rows from {num_videos} videos of {num_frames} frames ({scenes}) in "
            f"{summary['seconds']} s"
        )
        for kind, count in summary["kinds"].items():
            floor = summary["no_video_floor"].get(kind)
            print(f"  {kind:16s} {count:5d}" + ("" if floor is None else f"   no-video floor {floor:.3f}"))
        if "scene_clips" in summary:
            print(f"  scene clips: {summary['scene_clips']['rows']} rows, frames {summary['scene_clips']['frames']}")
    print()
    for num_frames in args.frames:
        path = out / str(num_frames)
        print(
            f"frames2lora eval --data {path}/dataset --margin 0.05 --frames {num_frames} {LOADER} "
            f"--out REPORT/long{num_frames}"
        )
        if args.scene_clips:
            print(
                f"frames2lora eval --data {path}/scenes/dataset --margin 0.05 --frames 16 {LOADER} "
                f"--out REPORT/scenes{num_frames}"
            )


if __name__ == "__main__":
    main()
