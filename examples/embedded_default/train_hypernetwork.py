"""Train the embedded default's Frames2LoRA hypernetwork on the frozen synthetic-world base VLM, and ship it.

    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2

Writes `--train_clips` real mp4 clips of the synthetic world (seeded by `--seed`) with torchcodec, with their questions
and (`--captions`) caption rows, and trains with `HyperLoraTrainer` (video → adapter; the student answers with the
adapter and no video in context; `--objective` ce, kl or ce+kl against the video-in-context teacher). Then it saves a
self-contained checkpoint to `--output` (default: the shipped one's folder,
`src/peft_hyper/checkpoints/frames2lora-synthetic`): the hypernetwork (`adapter_model.safetensors`,
`adapter_config.json`), the processor, a model card, and the base VLM under `base/` (named
`peft_hyper://checkpoints/<name>/base` in the config so it resolves wherever the package is installed).

Main options: `--base` (the frozen VLM, from `train_base_vlm.py`; the shipped one is also the checkpoint's `base/`),
`--init_from` (continue a saved checkpoint), `--max_steps`, `--learning_rate`, `--objective`, `--task_weights`
(loss weight per question kind, e.g. `motion=4,temporal=2`), `--internalize_prompt` /
`--internalize_generation_prompt` (what the hypernetwork reads the video under), `--num_latents`, `--rank`,
`--rows_per_video`, `--threads`.

`--architecture` chooses the hypernetwork (`HyperLoraConfig.architecture`): `peft-hyper` (the default, the shipped
one's) or `frames2lora` (the reference's, sized by the same `--latent_dim`, `--num_latents`, `--num_blocks`,
`--rank`, with `--num_heads`, `--head_dim` and `--num_key_value_heads` for its grouped-query attention). Both read
the clips by `--frame_sampling` (default `uniform`: the world's clips hold exactly `--num_frames` frames).
`--long_videos N --long_frames 48,96 --segment_frames 12` adds N long videos per length of the long-video world
(`peft_hyper.testing.long_world`: scenes of 12-16 frames; single-scene questions with a time cue, cross-scene counts
and order, long captions) and trains through composition (`HyperLoraTrainer(segment_frames=...)`: every video, clips
included, is cut into segments whose adapters are composed, as `generate_adapter(..., segment_frames=)` does).
`--cue_questions P` phrases a fraction P of the clips' questions as the long world's time-cued ones ("in the scene at
00:07, what colour is the circle?", the time uniform over the clip's frames), so that a segment's adapter answers the
question a segment router sends it as well as the plain one (`docs/long_videos.md`, routing); `--cue_seconds S`
draws the time over `[0, S)` instead, as a segment deep into a long video is asked (its cue names its own time).
`--video_dir` keeps the clips elsewhere than `<workdir>/train_videos` and reuses the ones already there (the same
seed writes the same clips), so that several runs can share them; `--max_minutes` stops training after that many
minutes of it (the learning-rate schedule still follows `--max_steps`), for runs compared on the same time budget.

The shipped hypernetwork is eleven stages of this script, each on new clips and each after the first continuing the
one before: their commands, times and results are in docs/embedded_default.md ("Reproduce", and the results table
of "Does it work?").
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import time
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import AutoProcessor, SmolVLMForConditionalGeneration, TrainerCallback, TrainingArguments

import peft_hyper
from peft_hyper.config import PACKAGE_PATH_PREFIX
from peft_hyper.testing.long_world import LONG_QA_KINDS, cued_question, make_long_dataset
from peft_hyper.testing.world import CAPTION_PROMPT, QA_KINDS, ClipSpec, make_dataset, write_clip

KINDS = (*QA_KINDS, *LONG_QA_KINDS, "caption")


def parse_task_weights(text: str) -> dict[str, float]:
    """'motion=4,temporal=2' → {'motion': 4.0, 'temporal': 2.0}."""
    weights = {}
    for part in filter(None, text.split(",")):
        kind, sep, value = part.partition("=")
        if not sep or kind not in KINDS:
            raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT with KIND in {KINDS}, got {part!r}")
        weights[kind] = float(value)
    return weights


def with_time_cue(row: dict, index: int, fraction: float, seed: int, num_frames: int, cue_seconds: int | None) -> dict:
    """With probability `fraction` (seeded by the row), the row's clip question asked about the scene at a time
    inside the clip (1 fps: frame `k` at `k` s; or anywhere in `[0, cue_seconds)`), as the long world asks about one
    of its scenes."""
    rng = random.Random(f"{seed}|cue|{index}")
    if row["task_type"] not in QA_KINDS or rng.random() >= fraction:
        return {}
    return {"prompt": cued_question(row["task_type"], row["prompt"], rng.randrange(cue_seconds or num_frames))}


class StopAfterMinutes(TrainerCallback):
    """Stop training once `minutes` of it have passed (checked after every step)."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.start = minutes * 60, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="outputs/base_vlm")
    parser.add_argument("--output", default="src/peft_hyper/checkpoints/frames2lora-synthetic")
    parser.add_argument("--workdir", default="outputs/hypernetwork")
    parser.add_argument("--video_dir", help="where the training clips are written (default <workdir>/train_videos)")
    parser.add_argument("--train_clips", type=int, default=4000)
    parser.add_argument("--num_frames", type=int, default=12)
    parser.add_argument("--long_videos", type=int, default=0, help="long-world training videos per --long_frames")
    parser.add_argument(
        "--long_frames", type=lambda text: [int(v) for v in text.split(",")], default=[48], help="e.g. 48,96"
    )
    parser.add_argument("--segment_frames", type=int, help="train through adapters composed of segments this long")
    parser.add_argument(
        "--segment_scaling",
        choices=["sum", "sqrt", "mean"],
        help="weight of each segment in a composition (HyperLoraConfig.segment_scaling; also set on --init_from)",
    )
    parser.add_argument(
        "--time_encoding",
        action="store_true",
        help="give the hypernetwork each segment's time span (HyperLoraConfig.time_encoding; also on --init_from)",
    )
    parser.add_argument(
        "--cue_questions", type=float, default=0.0, help="fraction of clip questions phrased with a time cue"
    )
    parser.add_argument("--cue_seconds", type=int, help="draw cue times over [0, S) s instead of the clip's frames")
    parser.add_argument("--size", type=int, default=64, help="rendered frame size (px)")
    parser.add_argument("--max_steps", type=int, default=5000)
    parser.add_argument("--max_minutes", type=float, help="stop training after this many minutes of it")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--objective", default="ce+kl", choices=["ce", "kl", "ce+kl"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--latent_dim", type=int, default=128)
    parser.add_argument("--num_blocks", type=int, default=3)
    parser.add_argument("--num_latents", type=int, default=32)
    parser.add_argument("--architecture", default="peft-hyper", choices=["peft-hyper", "frames2lora"])
    parser.add_argument("--num_heads", type=int, default=4, help="perceiver attention (query) heads")
    parser.add_argument("--head_dim", type=int, default=32, help="width of each perceiver attention head")
    parser.add_argument(
        "--num_key_value_heads",
        type=int,
        help="key/value heads of the grouped-query attention (frames2lora only; default: --num_heads)",
    )
    parser.add_argument("--frame_sampling", default="uniform", choices=["uniform", "reference"])
    parser.add_argument("--target_modules", default=r".*text_model\.layers\.\d+\.(mlp\.down_proj|self_attn\.o_proj)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run and of the training clips")
    parser.add_argument(
        "--captions", action=argparse.BooleanOptionalAction, default=True, help="also train on the clips' caption rows"
    )
    parser.add_argument("--init_from", help="continue from this saved Frames2LoRA checkpoint")
    parser.add_argument(
        "--task_weights",
        type=parse_task_weights,
        default={},
        help="loss weight per question kind, e.g. 'motion=4,temporal=2' (others 1), via the rows' loss_weight",
    )
    parser.add_argument(
        "--internalize_prompt",
        default=CAPTION_PROMPT,
        help="the instruction after the video in the hypernetwork's forward (also set on an --init_from checkpoint)",
    )
    parser.add_argument(
        "--internalize_generation_prompt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end the hypernetwork's input with the assistant turn's opening (the VLM about to answer the prompt)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--rows_per_video",
        type=int,
        default=4,
        help="batch up to this many rows of a clip together (0: plain shuffling)",
    )
    return parser.parse_args()


def hyper_config(args: argparse.Namespace) -> peft_hyper.HyperLoraConfig:
    return peft_hyper.HyperLoraConfig(
        r=args.rank,
        target_modules=args.target_modules,
        latent_dim=args.latent_dim,
        num_latents=args.num_latents,
        num_blocks=args.num_blocks,
        architecture=args.architecture,
        num_heads=args.num_heads,
        head_dim=args.head_dim,
        num_key_value_heads=args.num_key_value_heads,
        frame_sampling=args.frame_sampling,
        num_frames=args.num_frames,
        init_scale_b=0.0,
        internalize_prompt=args.internalize_prompt,
        internalize_generation_prompt=args.internalize_generation_prompt,
        segment_scaling=args.segment_scaling or "sum",
        time_encoding=args.time_encoding,
    )


def with_time_encoding(model: PeftModel, base: str) -> PeftModel:
    """A hypernetwork with a time input (`HyperLoraConfig.time_encoding`) that generates what `model`'s does: its
    weights copied in, the new time projection at its zero initialisation."""
    config = copy.deepcopy(model.peft_config["default"])
    config.time_encoding = True
    timed = get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(base).eval(), config)
    missing, unexpected = timed.base_model.hypernetwork.load_state_dict(
        model.base_model.hypernetwork.state_dict(), strict=False
    )
    if unexpected or any(not name.startswith("time_proj.") for name in missing):
        raise RuntimeError(f"not a continuation: missing {missing}, unexpected {unexpected}")
    return timed


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    workdir = Path(args.workdir)
    start = time.perf_counter()

    train = make_dataset(args.train_clips, seed=args.seed, num_frames=args.num_frames, size=args.size, split="train")
    video_dir = Path(args.video_dir or workdir / "train_videos")
    written: dict[str, str] = {}

    def video_path(row: dict) -> dict:  # write each clip once; keep one already in video_dir (same seed, same clip)
        if row["clip_id"] not in written:
            path = video_dir / f"{row['clip_id']}.mp4"
            if not path.exists():
                write_clip(ClipSpec.from_json(row["spec"]), path, args.num_frames, args.size)
            written[row["clip_id"]] = str(path)
        return {"video": written[row["clip_id"]]}

    train = train.map(video_path)
    if args.cue_questions:
        train = train.map(
            with_time_cue,
            with_indices=True,
            fn_kwargs={
                "fraction": args.cue_questions,
                "seed": args.seed,
                "num_frames": args.num_frames,
                "cue_seconds": args.cue_seconds,
            },
        )
    if args.long_videos:
        from datasets import concatenate_datasets

        long_sets = [
            make_long_dataset(args.long_videos, args.seed, frames, size=args.size, video_dir=video_dir, split="train")
            for frames in args.long_frames
        ]
        columns = train.column_names
        train = concatenate_datasets([train, *(d.select_columns(columns).cast(train.features) for d in long_sets)])
    if not args.captions:
        train = train.filter(lambda row: row["task_type"] != "caption")
    if args.task_weights:
        train = train.map(lambda row: {"loss_weight": args.task_weights.get(row["task_type"], 1.0)})
    videos = f" and {args.long_videos} long videos per length {args.long_frames}" if args.long_videos else ""
    print(f"{len(train)} training rows from {args.train_clips} clips{videos} ({time.perf_counter() - start:.0f}s)")

    vlm = SmolVLMForConditionalGeneration.from_pretrained(args.base).eval()
    if args.init_from:  # continue training a saved hypernetwork (its own config, with this run's prompt)
        config = PeftConfig.from_pretrained(args.init_from)
        config.internalize_prompt = args.internalize_prompt
        config.internalize_generation_prompt = args.internalize_generation_prompt
        config.segment_scaling = args.segment_scaling or config.segment_scaling
        model = PeftModel.from_pretrained(vlm, args.init_from, config=config, is_trainable=True)
        if args.time_encoding and not config.time_encoding:
            model = with_time_encoding(model, args.base)
    else:
        model = get_peft_model(vlm, hyper_config(args))
    model.base_model.set_processor(AutoProcessor.from_pretrained(args.base))
    model.print_trainable_parameters()

    training_args = TrainingArguments(
        output_dir=str(workdir / "run"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(100, args.max_steps // 10),
        weight_decay=0.0,
        logging_steps=50,
        save_steps=500,
        save_total_limit=1,
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    trainer = peft_hyper.HyperLoraTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        objective=args.objective,
        kl_top_k=None,
        rows_per_video=args.rows_per_video or None,
        segment_frames=args.segment_frames,
        num_frames=max(args.num_frames, *args.long_frames) if args.long_videos else None,
        callbacks=[StopAfterMinutes(args.max_minutes)] if args.max_minutes else None,
    )
    train_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if any((workdir / "run").glob("checkpoint-*")) else None)
    train_minutes = (time.perf_counter() - start) / 60
    print(
        f"{args.architecture}: {trainer.state.global_step} of {args.max_steps} steps in "
        f"{(time.perf_counter() - train_start) / 60:.1f} min of training"
    )

    output = Path(args.output)
    if output.exists():
        shutil.rmtree(output)
    model.save_pretrained(output, selected_adapters=["default"])
    shutil.copytree(args.base, output / "base")
    package = Path(peft_hyper.__file__).resolve().parent
    config_path = output / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    if output.resolve().is_relative_to(package):  # shipped inside the package: a path that survives installation
        relative = output.resolve().relative_to(package).as_posix()
        saved["base_model_name_or_path"] = f"{PACKAGE_PATH_PREFIX}{relative}/base"
    else:
        saved["base_model_name_or_path"] = str((output / "base").resolve())
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True))
    trainer.create_model_card(model_name=output.name, dataset_name=None, tags=["synthetic"])
    shutil.copy(Path(training_args.output_dir) / "README.md", output / "README.md")
    print(
        f"saved {output} ({sum(f.stat().st_size for f in output.rglob('*') if f.is_file()) / 2**20:.1f} MiB); "
        f"total {train_minutes:.1f} min"
    )


if __name__ == "__main__":
    main()
