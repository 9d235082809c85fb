"""Write the held-out evaluation sets of the embedded default as real mp4s plus saved `datasets` dirs.

    python examples/embedded_default/make_eval_sets.py --out outputs/eval

* ``main``: the first ``--clips`` clips of the *test* split (seeds disjoint from training and validation), 12 frames
  at 64 px, 1 fps: exactly the format the checkpoint was trained on. One row per question plus a caption row.
* ``frames``: the first ``--sweep_clips`` of those same clips rendered at ``--sweep_frames`` frames over the same
  12 seconds (fps = frames / 12), so sampling 12, 48 or 192 frames from them shows the same events.

Evaluate with the `frames2lora eval` commands printed at the end (the ones in docs/embedded_default.md, "Reproduce"):
``--video-loader peft_hyper.testing.world:render_spec_video`` renders each row's clip from its ``spec`` column.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peft_hyper.testing.world import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/eval")
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--sweep_clips", type=int, default=100)
    parser.add_argument("--sweep_frames", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    sets = {
        "main": dict(num_clips=args.clips, num_frames=12, fps=1.0),
        "frames": dict(num_clips=args.sweep_clips, num_frames=args.sweep_frames, fps=args.sweep_frames / 12),
    }
    for name, kwargs in sets.items():
        if (out / name / "dataset" / "dataset_info.json").is_file():
            print(f"{out / name} exists; kept")
            continue
        dataset = make_dataset(seed=args.seed, size=64, video_dir=out / name / "videos", split="test", **kwargs)
        dataset.save_to_disk(str(out / name / "dataset"))
        print(f"{out / name}: {len(dataset)} rows from {kwargs['num_clips']} clips")
    loader = "--video-loader peft_hyper.testing.world:render_spec_video"
    print(
        f"\nframes2lora eval --data {out}/main/dataset --margin 0.05 --frames 12 --batch-size 16 {loader} "
        "--out REPORT/main\n"
        f"frames2lora eval --data {out}/frames/dataset --margin 0.05 --controls '' --frames 12,48,192 --batch-size 4 "
        f"{loader} --out REPORT/frames"
    )


if __name__ == "__main__":
    main()
