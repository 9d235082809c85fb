"""Hypernetwork training throughput: plain row shuffling vs `rows_per_video` (rows about one video share one batch,
so the hypernetwork's VLM forward and the video decode run once per video instead of once per row).

Continues training the embedded default's hypernetwork (or `--model`'s) from its saved weights — nothing is written
back — with `HyperLoraTrainer` (objective ce+kl, as the shipped checkpoint was trained) on synthetic-world clips (about
ten questions and a caption each), once per setting, in one process, and prints seconds per step, rows per second and
the speed-up over plain shuffling. Example (the figures in docs/benchmarks.md):

    python benchmarks/train_step.py --clips 300 --steps 40 --rows_per_video 2 4 8 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


class StepTimer(TrainerCallback):
    """Records the wall time at the start of training and at the end of each optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_begin(self, *args, **kwargs) -> None:
        self.ends = [time.perf_counter()]

    def on_step_end(self, *args, **kwargs) -> None:
        self.ends.append(time.perf_counter())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="a Frames2LoRA checkpoint dir (default: the embedded default)")
    parser.add_argument("--clips", type=int, default=300, help="synthetic training clips")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rows_per_video", nargs="+", type=int, default=[4], help="settings besides plain shuffling")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output path (default: benchmarks/results/)")
    parser.add_argument("--tag", default="")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    common.setup(args)
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, TrainingArguments

    import peft_hyper
    from peft_hyper.cli import default_model
    from peft_hyper.config import resolve_package_path
    from peft_hyper.testing.world import make_dataset

    model_dir = args.model or default_model()
    if model_dir is None:
        raise SystemExit("No embedded default checkpoint is installed: pass --model DIR.")
    config = peft_hyper.HyperLoraConfig.from_pretrained(model_dir)
    machine = common.machine_info("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train = make_dataset(args.clips, seed=args.seed, num_frames=config.num_frames, video_dir=Path(tmp) / "videos")
        for rows_per_video in [None, *args.rows_per_video]:
            vlm = AutoModelForImageTextToText.from_pretrained(resolve_package_path(config.base_model_name_or_path))
            model = PeftModel.from_pretrained(vlm, model_dir, is_trainable=True)
            timer = StepTimer()
            trainer = peft_hyper.HyperLoraTrainer(
                model=model,
                args=TrainingArguments(
                    output_dir=str(Path(tmp) / "run"),
                    max_steps=args.warmup + args.steps,
                    per_device_train_batch_size=args.batch_size,
                    learning_rate=1e-4,
                    save_strategy="no",
                    report_to=[],
                    seed=args.seed,
                    use_cpu=True,
                    disable_tqdm=True,
                ),
                train_dataset=train,
                objective="ce+kl",
                rows_per_video=rows_per_video,
                callbacks=[timer],
            )
            trainer.train()
            timed = timer.ends[args.warmup :]
            seconds_per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
            rows.append(
                {
                    "rows_per_video": rows_per_video or "– (plain shuffling)",
                    "s_per_step": seconds_per_step,
                    "rows_per_s": args.batch_size / seconds_per_step,
                }
            )
            del trainer, model, vlm
    for row in rows:
        row["speedup"] = rows[0]["s_per_step"] / row["s_per_step"]
    title = f"Hypernetwork training, batch {args.batch_size}, {args.steps} steps per setting ({model_dir})"
    common.print_table(
        rows,
        [
            ("rows_per_video", "rows_per_video"),
            ("s_per_step", "s / step"),
            ("rows_per_s", "rows / s"),
            ("speedup", "speed-up"),
        ],  # fmt: skip
        title,
    )
    result = {"machine": machine, "args": vars(args), "num_rows": len(train), "rows": rows}
    common.finish(result, common.output_path(args, "train_step"))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
