#!/usr/bin/env python
"""Train the embedded default's base VLM: a tiny SmolVLM, from scratch, on the synthetic video world.

The model is a real `SmolVLMForConditionalGeneration` with a locally trained BPE tokenizer (its corpus holds every word
of the synthetic world) and a real `SmolVLMProcessor`. It is trained the plain way, with the video in context: the
SmolVLM chat template with a video entry (formatted by the processor, exactly as `peft_hyper` formats it at inference),
then the question, and a next-token loss on the answer tokens only (``" " + answer + "<end_of_utterance>"``, the
convention of `peft_hyper.data`). Captions ("Describe the video.") are mixed in: every caption token needs the video.

    python examples/embedded_default/train_base_vlm.py --output_dir outputs/base_vlm --minutes 6.5

Main options: the architecture (`--text_layers`, `--text_hidden`, `--image_size`, `--patch_size`, ...), `--pool_clips`,
`--batch_size`, `--learning_rate`, `--minutes` / `--max_steps`, `--init_from` and `--processor_dir` (continue a saved
model with its processor), `--device`, `--workers`. The shipped base is two stages of this script on a GPU; their
commands, times and results are in docs/embedded_default.md ("How it was built" and "Reproduce"), and its
`training_report.json` holds both stages' validation curves.

What makes it fast without changing what the model sees:

* Clips are rendered once into an in-memory pool by worker processes (`render_clip`, 12 frames at 64 px); each step
  draws clips from the pool and one question per clip (template first, so rare question kinds are not starved).
* Pixels are normalised on the device with the processor's own rescale factor / mean / std; the prompt ids of each
  distinct question are produced once by the real processor (`build_video_inputs`) and cached — the video part of
  the prompt depends on the frame count and timestamps only. Both are checked against the processor at start-up.
* Training frames get the colour loss of the shipped mp4s (yuv420p chroma subsampling, a little noise) half the time.

Validation is teacher-forced: a question counts as correct iff the arg-max at every answer position (the final
`<end_of_utterance>` included) is the target token, i.e. iff greedy decoding reproduces the answer. Training stops
at `--minutes`/`--max_steps` or once every question template reaches `--target_acc`; the best validation checkpoint
is saved.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, SmolVLMForConditionalGeneration

from peft_hyper.inputs import build_video_inputs
from peft_hyper.testing import world as S
from peft_hyper.testing.models import build_smolvlm_tokenizer, build_tiny_smolvlm
from peft_hyper.video import Video, load_video

IGNORE_INDEX = -100
TEMPLATE_NAMES = {
    S.T_COLOUR: "colour",
    S.T_SHAPE: "shape",
    S.T_SIZE: "size",
    S.T_MOTION: "motion",
    S.T_COUNT: "count",
    S.T_FIRST: "first",
    S.T_AFTER: "after",
    "caption": "caption",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--processor_dir", help="Use this saved tokenizer/processor instead of training a new one.")
    parser.add_argument("--init_from", help="Start from these weights (a model dir or a .safetensors file).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and the clip pool")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process (CPU)")
    parser.add_argument("--workers", type=int, default=4, help="processes rendering the clip pool")
    g = parser.add_argument_group("model")
    g.add_argument("--vocab_size", type=int, default=512)
    g.add_argument("--image_size", type=int, default=64)
    g.add_argument("--patch_size", type=int, default=8)
    g.add_argument("--scale_factor", type=int, default=2)
    g.add_argument("--text_hidden", type=int, default=192)
    g.add_argument("--text_layers", type=int, default=6)
    g.add_argument("--heads", type=int, default=6)
    g.add_argument("--kv_heads", type=int, default=2)
    g.add_argument("--intermediate", type=int, default=640)
    g.add_argument("--vision_hidden", type=int, default=128)
    g.add_argument("--vision_layers", type=int, default=3)
    g.add_argument("--vision_heads", type=int, default=4)
    g.add_argument("--max_position_embeddings", type=int, default=8192)
    g = parser.add_argument_group("data")
    g.add_argument("--num_frames", type=int, default=12)
    g.add_argument("--pool_clips", type=int, default=30000, help="training clips rendered into the pool")
    g.add_argument("--eval_clips", type=int, default=256, help="validation clips (all of their questions)")
    g.add_argument("--caption_prob", type=float, default=0.15, help="fraction of rows that are captions")
    g.add_argument("--augment_prob", type=float, default=0.5)
    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=128)
    g.add_argument("--learning_rate", type=float, default=1e-3)
    g.add_argument("--weight_decay", type=float, default=0.05)
    g.add_argument("--warmup_steps", type=int, default=200)
    g.add_argument("--max_steps", type=int, default=20000, help="also the length of the cosine schedule")
    g.add_argument("--minutes", type=float, default=None, help="wall-clock budget, pool rendering included")
    g.add_argument("--eval_every", type=int, default=250)
    g.add_argument("--target_acc", type=float, default=0.98)
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="autocast (default: on CUDA)")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer, processor, model
# ---------------------------------------------------------------------------------------------------------------------


def world_corpus(num_specs: int = 3000) -> list[str]:
    """Every word of the synthetic world in context: captions, questions and answers of many clips."""
    lines = [" ".join(S.COLOURS), " ".join(S.SHAPES), " ".join(S.SIZES), " ".join(S.MOTIONS), S.CAPTION_PROMPT] * 20
    for index in range(num_specs):
        spec = S.sample_spec(S.clip_seed(12345, "tokenizer", index))
        lines.append(S.caption(spec))
        lines.extend(
            f"{qa.question}<end_of_utterance>\nAssistant: {qa.answer}<end_of_utterance>" for qa in S.questions(spec)
        )
    return lines


def build_model_and_processor(args: argparse.Namespace) -> tuple[SmolVLMForConditionalGeneration, object]:
    if args.processor_dir:
        tokenizer = AutoProcessor.from_pretrained(args.processor_dir).tokenizer
    else:
        tokenizer = build_smolvlm_tokenizer(args.vocab_size, corpus=world_corpus())
    model, processor = build_tiny_smolvlm(
        seed=args.seed,
        tokenizer=tokenizer,
        num_frames=args.num_frames,
        image_size=args.image_size,
        patch_size=args.patch_size,
        scale_factor=args.scale_factor,
        text_hidden=args.text_hidden,
        text_layers=args.text_layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        vision_heads=args.vision_heads,
        max_position_embeddings=args.max_position_embeddings,
    )
    if args.init_from:
        from safetensors.torch import load_file

        path = Path(args.init_from)
        state = load_file(path / "model.safetensors" if path.is_dir() else path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [key for key in missing if "lm_head" not in key]:
            raise ValueError(f"--init_from does not match the model: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
    return model, processor


# ---------------------------------------------------------------------------------------------------------------------
# Data: a rendered clip pool, cached prompt ids, device-side pixel normalisation
# ---------------------------------------------------------------------------------------------------------------------


def clip_video(frames: torch.Tensor) -> Video:
    """A rendered clip as `load_video` returns the same frames decoded from a 1-fps mp4 (same timestamps)."""
    return load_video(frames, num_frames=frames.shape[0], source_fps=1.0)


def clip_rows(spec: S.ClipSpec) -> list[tuple[str, str, str]]:
    """``(template name, prompt, answer)`` of every question about the clip, and its caption."""
    rows = [(TEMPLATE_NAMES[qa.template], qa.question, qa.answer) for qa in S.questions(spec)]
    rows.append(("caption", S.CAPTION_PROMPT, S.caption(spec)))
    return rows


def _render(job: tuple[int, int, int]) -> np.ndarray:
    seed, num_frames, size = job
    torch.set_num_threads(1)
    return S.render_clip(S.sample_spec(seed), num_frames, size).numpy()


def render_pool(seeds: list[int], num_frames: int, size: int, workers: int) -> torch.Tensor:
    """uint8 ``(N, T, 3, size, size)`` renders of the clips with these seeds."""
    jobs = [(seed, num_frames, size) for seed in seeds]
    if workers <= 1:
        return torch.from_numpy(np.stack([_render(job) for job in jobs]))
    with mp.get_context("spawn").Pool(workers) as pool:
        return torch.from_numpy(np.stack(pool.map(_render, jobs, chunksize=256)))


class PromptEncoder:
    """Token ids of ``<video prompt> + question`` (cached per question) and of answers; pixel normalisation."""

    def __init__(self, processor, example_frames: torch.Tensor) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.example = clip_video(example_frames)
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}
        video_processor = processor.video_processor
        self.rescale = float(video_processor.rescale_factor)
        self.mean = torch.tensor(video_processor.image_mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(video_processor.image_std, dtype=torch.float32).view(1, 1, 3, 1, 1)
        inputs = build_video_inputs(processor, [self.example], "check", add_generation_prompt=True)
        diff = (inputs["pixel_values"] - self.pixels(example_frames[None].float())).abs().max().item()
        if diff > 1e-5:
            raise RuntimeError(f"Device-side normalisation differs from the processor's pixel_values by {diff}.")
        self.eos = getattr(self.tokenizer, "end_of_utterance_token", None) or self.tokenizer.eos_token

    def prompt(self, question: str) -> list[int]:
        if question not in self._prompts:
            inputs = build_video_inputs(self.processor, [self.example], question, add_generation_prompt=True)
            self._prompts[question] = inputs["input_ids"][0].tolist()
        return self._prompts[question]

    def answer(self, answer: str) -> list[int]:
        if answer not in self._answers:
            text = " " + answer.strip() + self.eos
            self._answers[answer] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._answers[answer]

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """float ``(B, T, 3, H, W)`` in [0, 255] → the processor's normalised pixel values."""
        mean, std = self.mean.to(frames.device), self.std.to(frames.device)
        return (frames * self.rescale - mean) / std


def simulate_h264(frames: torch.Tensor, noise: float = 2.0) -> torch.Tensor:
    """float ``(B, T, 3, H, W)`` RGB in [0, 255] → with yuv420p chroma subsampling and a little noise."""
    r, g, b = frames.unbind(2)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    chroma = torch.stack([b - y, r - y], dim=2)  # (B, T, 2, H, W)
    shape = chroma.shape
    chroma = F.avg_pool2d(chroma.flatten(0, 1), 2)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).view(shape)
    cb, cr = chroma.unbind(2)
    r, b = y + cr, y + cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    out = torch.stack([r, g, b], dim=2) + noise * torch.randn_like(frames)
    return out.round().clamp(0, 255)


def collate(
    rows: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt ids, answer ids)`` rows → right-padded ``input_ids``, ``attention_mask``, ``labels`` ``(B, S)``."""
    length = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        ids = prompt + answer
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, len(prompt) : len(ids)] = torch.tensor(answer)
        attention_mask[i, : len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def answer_logits(model, input_ids, attention_mask, pixel_values, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a label, and those labels (flattened)."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)[0]
    predicting = labels[:, 1:] != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][predicting])
    return logits.float(), labels[:, 1:][predicting]


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, encoder: PromptEncoder, specs, pool: torch.Tensor, device, autocast, batch_size: int):
    """Teacher-forced exact match per template and per question kind over every question of every clip."""
    model.eval()
    items = [(index, name, q, a) for index, spec in enumerate(specs) for name, q, a in clip_rows(spec)]
    correct: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows = [(encoder.prompt(q), encoder.answer(a)) for _, _, q, a in chunk]
        input_ids, attention_mask, labels = collate(rows, encoder.tokenizer.pad_token_id, device)
        frames = pool[[index for index, *_ in chunk]].to(device).float()
        with autocast():
            logits, targets = answer_logits(model, input_ids, attention_mask, encoder.pixels(frames), labels)
        hits = (logits.argmax(-1) == targets).float()
        counts = [len(encoder.answer(a)) for *_, a in chunk]
        for (_, name, _, _), row_hits in zip(chunk, hits.split(counts), strict=True):
            correct[name].append(row_hits.mean().item() if name == "caption" else float(row_hits.all()))
    model.train()
    accuracy = {name: float(np.mean(values)) for name, values in sorted(correct.items())}
    kinds = {"attribute": ("colour", "shape", "size"), "motion": ("motion",), "count": ("count",)}
    kinds["temporal"] = ("first", "after")
    for kind, names in kinds.items():
        values = [v for name in names for v in correct.get(name, [])]
        accuracy[f"kind/{kind}"] = float(np.mean(values)) if values else float("nan")
    return accuracy


def fmt(accuracy: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.3f}" for name, value in accuracy.items() if not name.startswith("kind/"))


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device(args.device)
    use_bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    model, processor = build_model_and_processor(args)
    size = args.image_size
    train_specs = [S.sample_spec(S.clip_seed(args.seed, "train", i)) for i in range(args.pool_clips)]
    val_specs = [S.sample_spec(S.clip_seed(args.seed, "validation", i)) for i in range(args.eval_clips)]
    train_pool = render_pool([s.seed for s in train_specs], args.num_frames, size, args.workers)
    val_pool = render_pool([s.seed for s in val_specs], args.num_frames, size, args.workers)
    encoder = PromptEncoder(processor, train_pool[0])
    # Per training clip: its questions grouped by template (a step draws a template first, then a question).
    train_questions: list[dict[str, list[tuple[str, str]]]] = []
    for spec in train_specs:
        by_template = defaultdict(list)
        for name, question, answer in clip_rows(spec):
            if name != "caption":
                by_template[name].append((question, answer))
        train_questions.append({name: by_template[name] for name in sorted(by_template)})
    for spec in val_specs:
        for _, question, answer in clip_rows(spec):
            encoder.prompt(question), encoder.answer(answer)
    parameters = sum(p.numel() for p in model.parameters())
    log(
        f"{parameters / 1e6:.2f}M parameters; pool of {len(train_specs)} clips rendered, {len(encoder._prompts)} "
        f"prompts cached ({time.perf_counter() - start:.0f}s); device {device}, bf16={use_bf16}"
    )

    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.98),
    )

    train_start = time.perf_counter()
    train_seconds = None if args.minutes is None else max(1.0, args.minutes * 60 - (train_start - start))

    def lr_at(step: int) -> float:
        """Linear warm-up, then cosine to 5% over `max_steps` or the time budget, whichever ends first."""
        if step < args.warmup_steps:
            return args.learning_rate * (step + 1) / args.warmup_steps
        progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
        if train_seconds is not None:
            progress = max(progress, min(1.0, (time.perf_counter() - train_start) / train_seconds))
        return args.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    history, best_score, step, losses = [], -1.0, 0, []
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    report = {"args": vars(args), "parameters": parameters, "device": str(device)}
    if device.type == "cuda":
        report["device"] = torch.cuda.get_device_name(device)

    def save_report(stop_reason: str | None) -> None:
        scored = [h for h in history if "score" in h]
        report.update(
            steps=step,
            stop_reason=stop_reason,
            minutes=round((time.perf_counter() - start) / 60, 2),
            best=max(scored, key=lambda h: h["score"]) if scored else None,
            history=history,
        )
        (out_dir / "training_report.json").write_text(json.dumps(report, indent=2))

    stop_reason = "max_steps"
    while step < args.max_steps:
        if args.minutes is not None and (time.perf_counter() - start) / 60 > args.minutes:
            stop_reason = "minutes"
            break
        clips = [rng.randrange(len(train_specs)) for _ in range(args.batch_size)]
        rows = []
        for index in clips:
            if rng.random() < args.caption_prob:
                question, answer = S.CAPTION_PROMPT, S.caption(train_specs[index])
            else:
                by_template = train_questions[index]
                question, answer = rng.choice(by_template[rng.choice(list(by_template))])
            rows.append((encoder.prompt(question), encoder.answer(answer)))
        input_ids, attention_mask, labels = collate(rows, encoder.tokenizer.pad_token_id, device)
        frames = train_pool[clips].to(device, non_blocking=True).float()
        augment = torch.rand(len(clips), device=device) < args.augment_prob
        frames = torch.where(augment.view(-1, 1, 1, 1, 1), simulate_h264(frames), frames)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with autocast():
            logits, targets = answer_logits(model, input_ids, attention_mask, encoder.pixels(frames), labels)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % args.eval_every == 0 or step == args.max_steps:
            accuracy = evaluate(model, encoder, val_specs, val_pool, device, autocast, 2 * args.batch_size)
            score = float(np.mean([v for k, v in accuracy.items() if k.startswith("kind/")]))
            elapsed = time.perf_counter() - start
            history.append(
                {
                    "step": step,
                    "seconds": round(elapsed, 1),
                    "loss": float(np.mean(losses)),
                    "score": score,
                    **accuracy,
                }
            )
            log(f"step {step} loss {np.mean(losses):.4f} lr {lr_at(step):.2e} score {score:.3f} | {fmt(accuracy)}")
            losses = []
            if score > best_score:  # keep the best validation weights on disk (a killed run still leaves them)
                best_score = score
                model.save_pretrained(out_dir, safe_serialization=True)
            save_report(None)
            question_accuracy = [v for k, v in accuracy.items() if not k.startswith("kind/") and k != "caption"]
            if min(question_accuracy) >= args.target_acc:
                stop_reason = "target_acc"
                break

    if best_score < 0:  # never evaluated: save the last weights
        model.save_pretrained(out_dir, safe_serialization=True)
    save_report(stop_reason)
    log(f"saved {out_dir} after {step} steps ({stop_reason}); best score {best_score:.3f}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
