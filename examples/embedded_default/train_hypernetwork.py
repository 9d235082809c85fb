"""Train the embedded default's Frames2LoRA hypernetwork on the frozen synthetic-world base VLM, and ship it.

    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --output src/peft_hyper/checkpoints/frames2lora-synthetic

The shipped hypernetwork is eleven runs of this script on 2 CPU threads (mp4 writing included):

    # 1. the defaults, but the reference's internalization prompt: 4,000 clips with their questions and captions
    #    (43,594 rows), 5,000 steps of batch 8 (up to 4 rows of a clip per batch), 32 latents, ce+kl; 62.2 min
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --internalize_prompt "Internalize this video for later captioning." --no-internalize_generation_prompt \
        --output outputs/hypernetwork_stage1 --workdir outputs/hypernetwork
    # 2. continued on 4,000 other clips (seed 1) under the default prompt, "Describe the video." + the assistant
    #    turn's opening: 3,500 steps at lr 5e-4; 40.1 min
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --init_from outputs/hypernetwork_stage1 --seed 1 --max_steps 3500 --learning_rate 5e-4 \
        --output outputs/hypernetwork_stage2 --workdir outputs/hypernetwork_stage2
    # 3. continued on 4,000 more clips (seed 2) with motion rows x4 and temporal-order rows x2 in the loss (a
    #    one-token motion answer is otherwise drowned among captions and attributes): 3,000 steps; 41.1 min
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --init_from outputs/hypernetwork_stage2 --seed 2 --max_steps 3000 --learning_rate 5e-4 \
        --task_weights motion=4,temporal=2 --output outputs/hypernetwork_stage3 --workdir outputs/hypernetwork_stage3
    # 4. the same on 4,000 more clips (seed 3); 46.5 min
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --init_from outputs/hypernetwork_stage3 --seed 3 --max_steps 3000 --learning_rate 5e-4 \
        --task_weights motion=4,temporal=2 --output outputs/hypernetwork_stage4 --workdir outputs/hypernetwork_stage4
    # 5. on 4,000 more clips (seed 4) with objective ce alone (the KL teacher answers motion right only half the time)
    #    and motion x6, temporal x3: 3,000 steps; 17.0 min
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --init_from outputs/hypernetwork_stage4 --seed 4 --max_steps 3000 --learning_rate 5e-4 --objective ce \
        --task_weights motion=6,temporal=3 --output outputs/hypernetwork_stage5 --workdir outputs/hypernetwork_stage5
    # 6. the same for 4,000 steps on 4,000 more clips (seed 5); 19.9 min
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --init_from outputs/hypernetwork_stage5 --seed 5 --max_steps 4000 --learning_rate 5e-4 --objective ce \
        --task_weights motion=6,temporal=3 --output outputs/hypernetwork_stage6 --workdir outputs/hypernetwork_stage6
    # 7., 8. and 9. the same, each on 4,000 more clips (seeds 6, 7, 8); 20.7, 20.0 and 19.0 min
    for stage in 7 8 9; do
        python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
            --init_from outputs/hypernetwork_stage$((stage - 1)) --seed $((stage - 1)) --max_steps 4000 \
            --learning_rate 5e-4 --objective ce --task_weights motion=6,temporal=3 \
            --output outputs/hypernetwork_stage$stage --workdir outputs/hypernetwork_stage$stage
    done
    # 10. and 11. the same with motion x10, each on 4,000 more clips (seeds 9, 10); 20.1 and 19.3 min
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --init_from outputs/hypernetwork_stage9 --seed 9 --max_steps 4000 --learning_rate 5e-4 --objective ce \
        --task_weights motion=10,temporal=3 --output outputs/hypernetwork_stage10 --workdir outputs/hypernetwork_stage10
    python examples/embedded_default/train_hypernetwork.py --base outputs/base_vlm --threads 2 \
        --init_from outputs/hypernetwork_stage10 --seed 10 --max_steps 4000 --learning_rate 5e-4 --objective ce \
        --task_weights motion=10,temporal=3 --workdir outputs/hypernetwork_stage11

`outputs/base_vlm` comes from `train_base_vlm.py`; the shipped base is also in the checkpoint's `base/` folder.

Writes real mp4 clips of the synthetic world with torchcodec, trains with `HyperLoraTrainer` (video → adapter; the
student answers with the adapter and no video in context), and saves a self-contained checkpoint: the hypernetwork
(`adapter_model.safetensors`, `adapter_config.json`), the processor, a model card, and the base VLM under `base/`
(named `peft_hyper://checkpoints/<name>/base` in the config so it resolves wherever the package is installed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import AutoProcessor, SmolVLMForConditionalGeneration, TrainingArguments

import peft_hyper
from peft_hyper.config import PACKAGE_PATH_PREFIX
from peft_hyper.synthetic import CAPTION_PROMPT, QA_KINDS, make_dataset


def parse_task_weights(text: str) -> dict[str, float]:
    """'motion=4,temporal=2' → {'motion': 4.0, 'temporal': 2.0}."""
    weights = {}
    for part in filter(None, text.split(",")):
        kind, sep, value = part.partition("=")
        if not sep or kind not in (*QA_KINDS, "caption"):
            raise argparse.ArgumentTypeError(
                f"expected KIND=WEIGHT with KIND in {(*QA_KINDS, 'caption')}, got {part!r}"
            )
        weights[kind] = float(value)
    return weights


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="outputs/base_vlm")
    parser.add_argument("--output", default="src/peft_hyper/checkpoints/frames2lora-synthetic")
    parser.add_argument("--workdir", default="outputs/hypernetwork")
    parser.add_argument("--train_clips", type=int, default=4000)
    parser.add_argument("--num_frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=64, help="rendered frame size (px)")
    parser.add_argument("--max_steps", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--objective", default="ce+kl", choices=["ce", "kl", "ce+kl"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--latent_dim", type=int, default=128)
    parser.add_argument("--num_blocks", type=int, default=3)
    parser.add_argument("--num_latents", type=int, default=32)
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
        num_heads=4,
        head_dim=32,
        num_frames=args.num_frames,
        init_scale_b=0.0,
        internalize_prompt=args.internalize_prompt,
        internalize_generation_prompt=args.internalize_generation_prompt,
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    workdir = Path(args.workdir)
    start = time.perf_counter()

    train = make_dataset(
        args.train_clips,
        seed=args.seed,
        num_frames=args.num_frames,
        size=args.size,
        video_dir=workdir / "train_videos",
        split="train",
    )
    if not args.captions:
        train = train.filter(lambda row: row["task_type"] != "caption")
    if args.task_weights:
        train = train.map(lambda row: {"loss_weight": args.task_weights.get(row["task_type"], 1.0)})
    print(f"{len(train)} training rows from {args.train_clips} clips ({time.perf_counter() - start:.0f}s)")

    vlm = SmolVLMForConditionalGeneration.from_pretrained(args.base).eval()
    if args.init_from:  # continue training a saved hypernetwork (its own config, with this run's prompt)
        config = PeftConfig.from_pretrained(args.init_from)
        config.internalize_prompt = args.internalize_prompt
        config.internalize_generation_prompt = args.internalize_generation_prompt
        model = PeftModel.from_pretrained(vlm, args.init_from, config=config, is_trainable=True)
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
    )
    trainer.train(resume_from_checkpoint=True if any((workdir / "run").glob("checkpoint-*")) else None)
    train_minutes = (time.perf_counter() - start) / 60

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
