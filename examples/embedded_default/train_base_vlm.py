#!/usr/bin/env python
"""Train the embedded-default base VLM: a tiny SmolVLM, from scratch, on the synthetic video world.

The model is a real `SmolVLMForConditionalGeneration` with a locally trained BPE tokenizer (its corpus includes every
word of the synthetic world) and a real `SmolVLMProcessor`. It is trained with the video in context: 12 frames, the
SmolVLM chat template with a video entry, loss on the answer tokens only (``" " + answer + "<end_of_utterance>"``,
the convention of `peft_hyper.data`).

Reproduce the shipped checkpoint (one process, one thread; ~25-45 min on a shared 2-core CPU):

    python examples/embedded_default/train_base_vlm.py --output_dir examples/embedded_default/base_vlm

Speed tricks (none of them changes what the model sees for a given question):

* Clips are rendered in-process with `render_clip` (fresh clips every step, never repeated) and normalised directly
  (checked at start-up to equal the processor's `pixel_values`); the token prefix of the video part of the prompt
  depends only on the frame count / timestamps, so it is tokenised once per timestamp variant with the real processor.
* "Shared-prefix packing": all questions about a clip (and its caption) are packed behind ONE copy of the video
  prompt, with a 4D attention mask so that each question segment sees the video prefix and itself only, and position
  ids that restart after the prefix for every segment. Each segment therefore gets exactly the logits it would get
  as ``<video prompt> + question`` alone (checked at start-up against the plain forward), while the vision tower
  and the ~400 video-prompt tokens are computed once per clip instead of once per question.
* Evaluation is teacher-forced with the same packing: a question counts as correct iff the arg-max at every answer
  position (including the final `<end_of_utterance>`) is the target token, which is exactly "greedy decoding
  reproduces the answer". The final evaluation also runs `model.generate` on real mp4s (torchcodec encode/decode,
  `peft_hyper.video.load_video`, the processor) to confirm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from peft_hyper import synthetic as S  # noqa: E402
from peft_hyper.testing_utils import build_smolvlm_tokenizer, build_tiny_smolvlm, save_tiny_smolvlm  # noqa: E402
from peft_hyper.video import Video, load_video  # noqa: E402

IGNORE = -100
KINDS = S.QA_KINDS  # attribute, motion, count, temporal


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "base_vlm"))
    p.add_argument("--seed", type=int, default=0, help="Seed of the weight init and of the training stream.")
    p.add_argument("--data_seed", type=int, default=0, help="Synthetic-world seed (`clip_seed(data_seed, split, i)`).")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: keep 1).")
    g = p.add_argument_group("architecture")
    g.add_argument("--vocab_size", type=int, default=768)
    g.add_argument("--image_size", type=int, default=64, help="Frame side fed to the vision tower (= render size).")
    g.add_argument("--patch_size", type=int, default=8)
    g.add_argument("--scale_factor", type=int, default=2)
    g.add_argument("--vision_hidden", type=int, default=96)
    g.add_argument("--vision_layers", type=int, default=3)
    g.add_argument("--vision_heads", type=int, default=4)
    g.add_argument("--text_hidden", type=int, default=128)
    g.add_argument("--text_layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv_heads", type=int, default=2)
    g.add_argument("--intermediate", type=int, default=384)
    g = p.add_argument_group("data")
    g.add_argument("--num_frames", type=int, default=12)
    g.add_argument("--clips_per_step", type=int, default=8, help="Clips per optimisation step (one packed row each).")
    g.add_argument(
        "--text_only_rows",
        type=int,
        default=1,
        help="Extra rows per step with the questions of one more clip and NO video (teaches a calibrated "
        "no-video answer; those rows are short).",
    )
    g.add_argument("--caption_weight", type=float, default=0.5, help="Loss weight of caption tokens vs answer tokens.")
    g.add_argument(
        "--source_frames",
        default="12,24,48,96,192",
        help="Source frame counts (at 1 fps) from which the 12 frames are sampled; the first is the "
        "default, the others vary the prompt's timestamps.",
    )
    g.add_argument(
        "--variant_prob",
        type=float,
        default=0.25,
        help="Probability that a training clip uses a non-default source frame count.",
    )
    g.add_argument(
        "--frame_curriculum",
        default="",
        help="'F1:S1,F2:S2': train on F1 frames per clip until step S1, F2 until S2, then --num_frames "
        "(fewer frames = shorter prompts and less dilution of the visual signal early on).",
    )
    g.add_argument(
        "--curriculum",
        default="150,400",
        help="'A,B': clips have exactly 1 object for the first A steps and 1-2 objects until step B, "
        "then 1-3 (the world's distribution). Empty: no curriculum.",
    )
    g = p.add_argument_group("stage 1: vision-tower pretraining (dense per-patch labels from the renderer)")
    g.add_argument("--vision_steps", type=int, default=400, help="0 disables stage 1.")
    g.add_argument("--vision_clips_per_step", type=int, default=6, help="x num_frames frames per step.")
    g.add_argument("--vision_lr", type=float, default=2e-3)
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--min_lr_ratio", type=float, default=0.05)
    g.add_argument(
        "--connector_lr_mult",
        type=float,
        default=1.0,
        help="LR multiplier of the connector (modality projection).",
    )
    g.add_argument(
        "--image_scale_on",
        choices=("layernorm", "connector"),
        default="layernorm",
        help="Where the x0.1 init scaling of image features lives. 'connector' (build_tiny_smolvlm's default) scales "
        "the projection weights, but Adam's updates do not scale with the weights, so within ~50 steps the scaling "
        "is undone and image features outgrow text embeddings ~10-50x; 'layernorm' moves the same factor to the "
        "vision tower's post-layernorm gain/bias (same function at init, stays small under Adam).",
    )
    g.add_argument("--warmup_steps", type=int, default=100)
    g.add_argument("--weight_decay", type=float, default=0.01)
    g.add_argument("--grad_clip", type=float, default=1.0)
    g.add_argument("--max_steps", type=int, default=4000, help="Length of the cosine schedule.")
    g.add_argument("--time_budget_min", type=float, default=45.0, help="Stop training after this wall time.")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_every", type=int, default=250)
    g.add_argument("--val_clips", type=int, default=60)
    g.add_argument("--val_objects", type=int, default=None, help="Fix the number of objects of validation clips.")
    g.add_argument(
        "--test_clips", type=int, default=100, help="Held-out clips of the final report (>= 500 questions)."
    )
    g.add_argument(
        "--target_acc", type=float, default=0.97, help="Stop early once every kind reaches this validation accuracy."
    )
    g.add_argument(
        "--generate_check",
        type=int,
        default=100000,
        help="Questions answered with model.generate from real mp4s in the final report.",
    )
    g.add_argument("--skip_final_eval", action="store_true")
    g.add_argument("--bench_steps", type=int, default=0, help="Only time this many training steps and exit.")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer, model, processor
# ----------------------------------------------------------------------------------------------------------------------


def world_corpus(num_specs: int = 3000) -> list[str]:
    """Every word of the synthetic world in context: captions, questions and answers of many clips, plus word lists."""
    lines = [
        " ".join(S.COLOURS),
        " ".join(S.SHAPES),
        " ".join(S.SIZES),
        " ".join(S.MOTIONS),
        "zero one two three four five six",
        S.CAPTION_PROMPT,
        "stays still moves appears disappears then",
    ] * 20
    for i in range(num_specs):
        spec = S.sample_spec(S.clip_seed(12345, "tokenizer", i))
        lines.append(S.caption(spec))
        for qa in S.questions(spec):
            lines.append(f"{qa.question}<end_of_utterance>\nAssistant: {qa.answer}<end_of_utterance>")
    return lines


def build(args: argparse.Namespace):
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
    )
    if args.image_scale_on == "layernorm":
        with torch.no_grad():
            model.model.connector.modality_projection.proj.weight.mul_(10.0)  # undo build_tiny_smolvlm's x0.1
            model.model.vision_model.post_layernorm.weight.mul_(0.1)
            model.model.vision_model.post_layernorm.bias.mul_(0.1)
    return model, processor


# ----------------------------------------------------------------------------------------------------------------------
# Prompt formatting and shared-prefix packing
# ----------------------------------------------------------------------------------------------------------------------


def conversation(video, question: str) -> list[dict]:
    content = ([{"type": "video", "video": video}] if video is not None else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def processor_inputs(processor, videos: list[Video | None], questions: list[str]):
    """The user-facing path: `apply_chat_template` with a video entry (or none), generation prompt, left padding."""
    has_video = videos[0] is not None
    kwargs = {"padding": True}
    if has_video:
        kwargs.update(video_metadata=[v.metadata for v in videos], do_sample_frames=False)
    return processor.apply_chat_template(
        [conversation(v.frames if v is not None else None, q) for v, q in zip(videos, questions, strict=True)],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=kwargs,
    )


def render_video(spec: S.ClipSpec, source_frames: int, num_frames: int, size: int) -> Video:
    """Render the clip at `source_frames` frames (1 fps) and sample `num_frames` of them like a decoded video."""
    return load_video(S.render_clip(spec, source_frames, size), num_frames=num_frames, source_fps=1.0)


class Packer:
    """Token ids of prompt pieces, checked against the real processor, and packing of several QAs per clip."""

    def __init__(self, processor, num_frames: int, image_size: int, source_frames: list[int]):
        self.processor = processor
        self.tok = tok = processor.tokenizer
        self.eou = tok.end_of_utterance_token
        fake = tok.convert_tokens_to_ids(tok.fake_image_token)
        probe = S.sample_spec(S.clip_seed(999, "probe", 0))
        self.fake, self.image_size, self.probe = fake, image_size, probe
        self._prefix: dict[tuple[int, int], list[int]] = {}
        ids = processor_inputs(processor, [None], ["?"])["input_ids"][0].tolist()
        self.text_prefix = ids[: len(ids) - len(self.question_ids("?", video=False))]
        self.mean = torch.tensor(processor.video_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.video_processor.image_std).view(1, 3, 1, 1)
        self.rescale = processor.video_processor.rescale_factor
        self.check(probe, num_frames, image_size, source_frames)

    def prefix(self, source_frames: int, num_frames: int) -> list[int]:
        """Token ids of the prompt up to the last frame's closing `<fake_token_around_image>`: they depend only on
        the number of frames and their timestamps, not on the pixels."""
        key = (source_frames, num_frames)
        if key not in self._prefix:
            video = render_video(self.probe, source_frames, num_frames, self.image_size)
            ids = processor_inputs(self.processor, [video], ["?"])["input_ids"][0].tolist()
            self._prefix[key] = ids[: max(i for i, t in enumerate(ids) if t == self.fake) + 1]
        return self._prefix[key]

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def question_ids(self, question: str, video: bool = True) -> list[int]:
        # Text after the last `<fake_token_around_image>` (video) or after "User:" (no video).
        return self.encode(("\n\n" if video else " ") + question + self.eou + "\nAssistant:")

    def answer_ids(self, answer: str) -> list[int]:
        return self.encode(" " + answer.strip() + self.eou)

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, 3, H, W) already at the model's size -> normalised float pixel values, as the processor does."""
        return (frames.float() * self.rescale - self.mean) / self.std

    def check(self, spec, num_frames: int, image_size: int, source_frames: list[int]) -> None:
        qas = S.questions(spec)
        for src in source_frames:
            video = render_video(spec, src, num_frames, image_size)
            inputs = processor_inputs(self.processor, [video] * len(qas), [qa.question for qa in qas])
            for row, qa in enumerate(qas):
                ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
                assert ids == self.prefix(src, num_frames) + self.question_ids(qa.question), (src, qa.question)
            diff = (inputs["pixel_values"][0] - self.pixels(video.frames)).abs().max().item()
            assert diff < 1e-5, f"pixel normalisation differs from the processor's ({diff})"
        inputs = processor_inputs(self.processor, [None] * len(qas), [qa.question for qa in qas])
        for row, qa in enumerate(qas):
            ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
            assert ids == self.text_prefix + self.question_ids(qa.question, video=False), qa.question


def pack_rows(rows: list[tuple[list[int], list[tuple[list[int], list[int], float, int]]]], pad_id: int):
    """Pack rows ``(prefix_ids, [(prompt_ids, answer_ids, weight, tag), ...])``.

    Returns input_ids, position_ids, a boolean 4D mask (True = may attend), per-position next-token targets and
    weights, and for every segment ``(row, tag, [target positions])``.
    """
    seqs, poss, segs, tgts, wts, spans = [], [], [], [], [], []
    for r, (prefix, segments) in enumerate(rows):
        ids, pos, seg = list(prefix), list(range(len(prefix))), [0] * len(prefix)
        tgt, wt = [IGNORE] * len(prefix), [0.0] * len(prefix)
        for k, (q, a, w, tag) in enumerate(segments, start=1):
            start = len(ids)
            ids += q + a
            pos += range(len(prefix), len(prefix) + len(q) + len(a))
            seg += [k] * (len(q) + len(a))
            # position j predicts token j+1: the last prompt token and every answer token but the last
            tgt += [IGNORE] * (len(q) - 1) + a + [IGNORE]
            wt += [0.0] * (len(q) - 1) + [w] * len(a) + [0.0]
            spans.append((r, tag, list(range(start + len(q) - 1, start + len(q) + len(a) - 1))))
        seqs.append(ids), poss.append(pos), segs.append(seg), tgts.append(tgt), wts.append(wt)
    length = max(len(s) for s in seqs)
    B = len(rows)
    input_ids = torch.full((B, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, length), dtype=torch.long)
    seg_ids = torch.full((B, length), -1, dtype=torch.long)
    targets = torch.full((B, length), IGNORE, dtype=torch.long)
    weights = torch.zeros((B, length))
    for r in range(B):
        n = len(seqs[r])
        input_ids[r, :n] = torch.tensor(seqs[r])
        position_ids[r, :n] = torch.tensor(poss[r])
        seg_ids[r, :n] = torch.tensor(segs[r])
        targets[r, :n] = torch.tensor(tgts[r])
        weights[r, :n] = torch.tensor(wts[r])
    idx = torch.arange(length)
    causal = idx.view(1, -1, 1) >= idx.view(1, 1, -1)
    q_seg, k_seg = seg_ids.unsqueeze(2), seg_ids.unsqueeze(1)
    mask = causal & (k_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    mask |= torch.eye(length, dtype=torch.bool).unsqueeze(0)  # padding rows attend to themselves (no NaN)
    return input_ids, position_ids, mask.unsqueeze(1), targets, weights, spans


def forward_packed(model, input_ids, position_ids, mask, pixel_values, positions: torch.Tensor | None = None):
    """Logits at `positions` (B, S bool) only, or everywhere."""
    out = model.model(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids, pixel_values=pixel_values, use_cache=False
    )
    hidden = out.last_hidden_state
    if positions is not None:
        hidden = hidden[positions]
    return model.lm_head(hidden)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


class ClipStream:
    """Fresh training clips, deterministic in (seed, data_seed, step)."""

    def __init__(self, args, packer: Packer):
        self.args, self.packer = args, packer
        self.sources = [int(s) for s in args.source_frames.split(",")]
        self.index = 0

    def max_objects(self, step: int) -> int | None:
        if not self.args.curriculum:
            return None
        one, two = (int(s) for s in self.args.curriculum.split(","))
        return 1 if step < one else 2 if step < two else None

    def frames_at(self, step: int) -> int:
        for item in filter(None, self.args.frame_curriculum.split(",")):
            frames, until = (int(v) for v in item.split(":"))
            if step < until:
                return frames
        return self.args.num_frames

    def next_spec(self, rng: random.Random, max_objects: int | None) -> S.ClipSpec:
        seed = S.clip_seed(self.args.data_seed, "train", self.index)
        self.index += 1
        if max_objects is not None:
            return S.sample_spec(seed, num_objects=rng.randint(1, max_objects))
        return S.sample_spec(seed)

    def batch(self, step: int):
        args, packer = self.args, self.packer
        rng = random.Random(hash((args.seed, step)) & 0xFFFFFFFF)
        max_objects = self.max_objects(step)
        num_frames = self.frames_at(step)
        rows, pixels = [], []
        for _ in range(args.clips_per_step):
            spec = self.next_spec(rng, max_objects)
            src = self.sources[0]
            if len(self.sources) > 1 and rng.random() < args.variant_prob:
                src = rng.choice(self.sources[1:])
            video = render_video(spec, src, num_frames, args.image_size)
            segments = [
                (packer.question_ids(qa.question), packer.answer_ids(qa.answer), 1.0, qa.kind)
                for qa in S.questions(spec)
            ]
            if args.caption_weight > 0:
                segments.append(
                    (
                        packer.question_ids(S.CAPTION_PROMPT),
                        packer.answer_ids(S.caption(spec)),
                        args.caption_weight,
                        "caption",
                    )
                )
            rng.shuffle(segments)
            rows.append((packer.prefix(src, num_frames), segments))
            pixels.append(packer.pixels(video.frames))
        for _ in range(args.text_only_rows):
            spec = self.next_spec(rng, max_objects)
            segments = [
                (packer.question_ids(qa.question, video=False), packer.answer_ids(qa.answer), 1.0, qa.kind)
                for qa in S.questions(spec)
            ]
            rows.append((packer.text_prefix, segments))
            pixels.append(torch.zeros_like(pixels[0]))  # all-zero frames are dropped by SmolVLM as padding
        return rows, torch.stack(pixels)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


def eval_specs(data_seed: int, split: str, n: int, num_objects: int | None = None) -> list[S.ClipSpec]:
    return [S.sample_spec(S.clip_seed(data_seed, split, i), num_objects=num_objects) for i in range(n)]


@torch.no_grad()
def evaluate_packed(
    model,
    packer: Packer,
    specs,
    args,
    mode: str = "video",
    videos: list[Video] | None = None,
    batch_clips: int = 8,
    source_frames: int | None = None,
):
    """Greedy-equivalent exact match per kind (and caption), teacher-forced with shared-prefix packing.

    mode: "video" (rendered frames, or `videos` e.g. decoded from mp4) or "text" (no video).
    """
    model.eval()
    src = source_frames or int(args.source_frames.split(",")[0])
    hits, totals = Counter(), Counter()
    for start in range(0, len(specs), batch_clips):
        chunk = specs[start : start + batch_clips]
        rows, pixels = [], []
        for j, spec in enumerate(chunk):
            video_mode = mode == "video"
            segments = [
                (
                    packer.question_ids(qa.question, video=video_mode),
                    packer.answer_ids(qa.answer),
                    1.0,
                    (qa.kind, TEMPLATE_NAMES[qa.template]),
                )
                for qa in S.questions(spec)
            ]
            if video_mode:
                segments.append(
                    (
                        packer.question_ids(S.CAPTION_PROMPT),
                        packer.answer_ids(S.caption(spec)),
                        1.0,
                        ("caption", "caption"),
                    )
                )
                video = (
                    videos[start + j]
                    if videos is not None
                    else render_video(spec, src, args.num_frames, args.image_size)
                )
                rows.append(
                    (
                        packer.prefix(src, args.num_frames) if videos is None else video_prefix_for(packer, video),
                        segments,
                    )
                )
                pixels.append(packer.pixels(video.frames))
            else:
                rows.append((packer.text_prefix, segments))
        input_ids, position_ids, mask, targets, _, spans = pack_rows(rows, packer.tok.pad_token_id)
        pixel_values = torch.stack(pixels) if pixels else None
        logits = forward_packed(model, input_ids, position_ids, mask, pixel_values)
        pred = logits.argmax(-1)
        for r, (kind, template), positions in spans:
            ok = bool((pred[r, positions] == targets[r, positions]).all())
            for tag in {kind, template}:
                hits[tag] += ok
                totals[tag] += 1
    return {k: hits[k] / totals[k] for k in totals}, dict(totals)


def video_prefix_for(packer: Packer, video: Video) -> list[int]:
    """Video-prompt prefix of an arbitrary (e.g. decoded) video, through the processor."""
    fake = packer.tok.convert_tokens_to_ids(packer.tok.fake_image_token)
    ids = processor_inputs(packer.processor, [video], ["?"])["input_ids"][0].tolist()
    return ids[: max(i for i, t in enumerate(ids) if t == fake) + 1]


@torch.no_grad()
def evaluate_generate(model, processor, specs, videos: list[Video | None], limit: int):
    """`model.generate` (greedy) on the user-facing processor path; exact match per kind."""
    model.eval()
    hits, totals = Counter(), Counter()
    done = 0
    for spec, video in zip(specs, videos, strict=True):
        qas = S.questions(spec)
        inputs = processor_inputs(processor, [video] * len(qas), [qa.question for qa in qas])
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for qa, answer in zip(qas, answers, strict=True):
            hits[qa.kind] += answer.strip().lower() == qa.answer
            totals[qa.kind] += 1
        done += len(qas)
        if done >= limit:
            break
    return {k: hits[k] / totals[k] for k in totals}, dict(totals)


TEMPLATE_NAMES = {
    S.T_COLOUR: "colour",
    S.T_SHAPE: "shape",
    S.T_SIZE: "size",
    S.T_MOTION: "direction",
    S.T_COUNT: "how_many",
    S.T_FIRST: "first",
    S.T_AFTER: "after",
}


def fmt(acc: dict[str, float], templates: bool = True) -> str:
    keys = [k for k in (*KINDS, "caption") if k in acc]
    text = " ".join(f"{k}={acc[k]:.3f}" for k in keys)
    if templates:
        text += "  [" + " ".join(f"{k}={acc[k]:.2f}" for k in TEMPLATE_NAMES.values() if k in acc) + "]"
    return text


def check_packing(model, packer: Packer, args) -> float:
    """Max |logit difference| between the packed forward and the plain processor forward, for one clip."""
    model.eval()
    spec = S.sample_spec(S.clip_seed(args.data_seed, "check", 0))
    qas = S.questions(spec)[:4]
    video = render_video(spec, args.num_frames, args.num_frames, args.image_size)
    rows = [
        (
            packer.prefix(args.num_frames, args.num_frames),
            [(packer.question_ids(qa.question), packer.answer_ids(qa.answer), 1.0, qa.kind) for qa in qas],
        )
    ]
    input_ids, position_ids, mask, targets, _, spans = pack_rows(rows, packer.tok.pad_token_id)
    with torch.no_grad():
        packed = forward_packed(model, input_ids, position_ids, mask, packer.pixels(video.frames)[None])
        worst = 0.0
        for (_, _, positions), qa in zip(spans, qas, strict=True):
            inputs = processor_inputs(packer.processor, [video], [qa.question])
            ids = torch.cat([inputs["input_ids"], torch.tensor([packer.answer_ids(qa.answer)])], dim=1)
            plain = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0]
            n = len(positions)
            worst = max(worst, (plain[-n - 1 : -1] - packed[0, positions]).abs().max().item())
    return worst


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: vision-tower pretraining
# ----------------------------------------------------------------------------------------------------------------------

_COLOUR_NAMES = list(S.COLOURS)
_BACKGROUND_NAMES = list(S.BACKGROUNDS)
# Per-patch heads: colour (6 + background), shape (3 + none), size (2 + none), background (4), patch row, patch col.
_PATCH_HEADS = {
    "colour": len(_COLOUR_NAMES) + 1,
    "shape": len(S.SHAPES) + 1,
    "size": len(S.SIZES) + 1,
    "background": len(_BACKGROUND_NAMES),
}


def patch_labels(spec: S.ClipSpec, frames: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """Per-patch ground truth of rendered frames `(T, 3, H, W)`: what is drawn at each patch's centre pixel."""
    centre = frames[:, :, patch // 2 :: patch, patch // 2 :: patch]  # (T, 3, h, w)
    T, _, h, w = centre.shape
    colour = torch.full((T, h, w), len(_COLOUR_NAMES), dtype=torch.long)
    shape = torch.full((T, h, w), len(S.SHAPES), dtype=torch.long)
    size = torch.full((T, h, w), len(S.SIZES), dtype=torch.long)
    for obj in spec.objects:  # colours are unique within a clip and never equal a background colour
        hit = (centre == torch.tensor(S.COLOURS[obj.colour], dtype=torch.uint8).view(1, 3, 1, 1)).all(1)
        colour[hit] = _COLOUR_NAMES.index(obj.colour)
        shape[hit] = S.SHAPES.index(obj.shape)
        size[hit] = list(S.SIZES).index(obj.size)
    background = torch.full((T, h, w), _BACKGROUND_NAMES.index(spec.background), dtype=torch.long)
    rows = torch.arange(h).view(1, h, 1).expand(T, h, w)
    cols = torch.arange(w).view(1, 1, w).expand(T, h, w)
    labels = {"colour": colour, "shape": shape, "size": size, "background": background, "row": rows, "col": cols}
    return {k: v.reshape(T, h * w) for k, v in labels.items()}


def pretrain_vision(model, packer: Packer, args) -> dict[str, float]:
    """Stage 1: train the vision tower alone with a throw-away linear head on dense per-patch labels (colour, shape,
    size, background and the patch's own row/column, so that position survives to the output features).

    Real VLMs start from a pretrained vision encoder; this is the from-scratch, offline equivalent and costs a few
    minutes. The post-layernorm (which carries the x0.1 image-feature scale) is left untouched.
    """
    vision = model.model.vision_model
    grid = args.image_size // args.patch_size
    sizes = {**_PATCH_HEADS, "row": grid, "col": grid}
    head = torch.nn.Linear(args.vision_hidden, sum(sizes.values()))
    params = [p for n, p in vision.named_parameters() if "post_layernorm" not in n] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.vision_lr, betas=(0.9, 0.98), weight_decay=0.0)
    gain = vision.post_layernorm.weight.detach().clone()
    bias = vision.post_layernorm.bias.detach().clone()
    index = 0
    running: dict[str, float] = defaultdict(float)
    t0 = time.time()
    model.train()
    for step in range(args.vision_steps):
        frames, labels = [], defaultdict(list)
        for _ in range(args.vision_clips_per_step):
            spec = S.sample_spec(S.clip_seed(args.data_seed, "vision-pretrain", index))
            index += 1
            clip = S.render_clip(spec, args.num_frames, args.image_size)
            frames.append(packer.pixels(clip))
            for k, v in patch_labels(spec, clip, args.patch_size).items():
                labels[k].append(v)
        hidden = vision(pixel_values=torch.cat(frames)).last_hidden_state
        hidden = (hidden - bias) / gain  # undo the (frozen, x0.1) post-layernorm affine: plain layer norm
        logits = head(hidden).split(list(sizes.values()), dim=-1)
        loss = 0.0
        for (name, _), logit in zip(sizes.items(), logits, strict=True):
            target = torch.cat(labels[name])
            loss = loss + F.cross_entropy(logit.flatten(0, 1), target.flatten())
            running[name] += (logit.argmax(-1) == target).float().mean().item()
        for group in optimizer.param_groups:
            group["lr"] = (
                args.vision_lr * min(1.0, (step + 1) / 50) * (0.5 + 0.5 * math.cos(math.pi * step / args.vision_steps))
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        running["loss"] += loss.item()
        if (step + 1) % 50 == 0:
            stats = {k: v / 50 for k, v in running.items()}
            log(
                f"vision step {step + 1} "
                + " ".join(f"{k}={v:.3f}" for k, v in stats.items())
                + f" ({time.time() - t0:.0f}s)"
            )
            running.clear()
    return {"vision_steps": args.vision_steps, "vision_pretrain_min": round((time.time() - t0) / 60, 2)}


@torch.no_grad()
def feature_norms(model, pixel_values: torch.Tensor) -> str:
    """Mean norm of image features (connector output) vs text embeddings: they should stay comparable."""
    features = torch.cat(list(model.model.get_image_features(pixel_values[:1]).pooler_output))
    embeddings = model.model.text_model.get_input_embeddings().weight
    return f"|img| {features.norm(dim=-1).mean():.2f} |txt| {embeddings.norm(dim=-1).mean():.2f}"


def lr_at(step: int, args) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    t_start = time.time()

    model, processor = build(args)
    packer = Packer(processor, args.num_frames, args.image_size, [int(s) for s in args.source_frames.split(",")])
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_frame = processor.image_seq_len
    log(
        f"model: {n_params / 1e6:.3f}M params, vocab {len(processor.tokenizer)}, {tokens_per_frame} <image> tokens "
        f"per frame, video prompt {len(packer.prefix(args.num_frames, args.num_frames))} tokens; setup {time.time() - t_start:.1f}s"
    )
    log(f"packing check: max |logit diff| packed vs plain = {check_packing(model, packer, args):.2e}")

    stage1 = pretrain_vision(model, packer, args) if args.vision_steps > 0 else {}

    groups = defaultdict(list)
    for name, param in model.named_parameters():
        mult = args.connector_lr_mult if "connector" in name else 1.0
        decay = args.weight_decay if param.ndim >= 2 and "embed" not in name else 0.0
        groups[mult, decay].append(param)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr_mult": mult, "weight_decay": decay} for (mult, decay), ps in groups.items()],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    stream = ClipStream(args, packer)
    val_specs = eval_specs(args.data_seed, "validation", args.val_clips, args.val_objects)
    history = []
    train_time = 0.0
    step = 0
    running = defaultdict(float)
    stop_reason = "max_steps"
    while step < args.max_steps:
        t0 = time.time()
        model.train()
        rows, pixel_values = stream.batch(step)
        input_ids, position_ids, mask, targets, weights, _ = pack_rows(rows, packer.tok.pad_token_id)
        positions = targets != IGNORE
        logits = forward_packed(model, input_ids, position_ids, mask, pixel_values, positions)
        ce = F.cross_entropy(logits, targets[positions], reduction="none")
        w = weights[positions]
        loss = (ce * w).sum() / w.sum()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args) * group["lr_mult"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        train_time += time.time() - t0
        running["loss"] += loss.item()
        running["n"] += 1
        if args.bench_steps and step >= args.bench_steps:
            log(f"bench: {train_time / step:.3f}s/step, seq len {input_ids.shape[1]}, loss {loss.item():.3f}")
            return
        if step % 50 == 0:
            log(
                f"step {step} loss {running['loss'] / running['n']:.4f} lr {lr_at(step, args):.2e} "
                f"train {train_time / 60:.1f} min ({train_time / step:.2f}s/step) | {feature_norms(model, pixel_values)}"
            )
            running.clear()
        if step % args.eval_every == 0 or step == args.max_steps:
            t1 = time.time()
            acc, _ = evaluate_packed(model, packer, val_specs, args)
            history.append({"step": step, "train_min": round(train_time / 60, 2), **acc})
            log(f"  eval step {step}: {fmt(acc)} ({time.time() - t1:.0f}s)")
            if min(acc.get(k, 1.0) for k in KINDS) >= args.target_acc:
                stop_reason = f"every kind >= {args.target_acc} on validation"
                break
        if train_time / 60 >= args.time_budget_min:
            stop_reason = "time budget"
            break
    log(f"training stopped after {step} steps, {train_time / 60:.1f} min of training ({stop_reason})")

    out = Path(args.output_dir)
    model.eval()
    save_tiny_smolvlm(out, model, processor)
    (out / "training_args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    log(f"saved to {out} ({size / 1e6:.2f} MB of safetensors)")
    report = {
        "steps": step,
        "stop_reason": stop_reason,
        "train_wall_min": round(train_time / 60, 2),
        "clips_seen": stream.index,
        "params": n_params,
        "image_tokens_per_frame": tokens_per_frame,
        "safetensors_bytes": size,
        "history": history,
        **stage1,
    }
    if not args.skip_final_eval:
        report.update(final_eval(out, args))
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"total wall time {(time.time() - t_start) / 60:.1f} min")


def final_eval(out: Path, args) -> dict:
    """Reload the saved dir offline and evaluate on held-out test clips (in-context, via mp4, no video, prior)."""
    from transformers import AutoProcessor, SmolVLMForConditionalGeneration

    model = SmolVLMForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    packer = Packer(processor, args.num_frames, args.image_size, [args.num_frames])
    specs = eval_specs(args.data_seed, "test", args.test_clips)
    dataset = S.make_dataset(args.test_clips, args.data_seed, split="test")
    assert [json.loads(s)["seed"] for s in dataset.unique("spec")] or True
    prior = S.answer_prior_accuracy(dataset)
    t0 = time.time()
    in_context, totals = evaluate_packed(model, packer, specs, args)
    no_video, _ = evaluate_packed(model, packer, specs, args, mode="text")
    log(
        f"test ({args.test_clips} clips, {sum(totals[k] for k in KINDS)} questions: "
        f"{', '.join(f'{k} {totals[k]}' for k in KINDS)}), {time.time() - t0:.0f}s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        paths = [
            S.write_clip(spec, Path(tmp) / f"{i}.mp4", num_frames=args.num_frames, size=args.image_size)
            for i, spec in enumerate(specs)
        ]
        mp4_videos = [load_video(p, num_frames=args.num_frames) for p in paths]
        mp4_packed, _ = evaluate_packed(model, packer, specs, args, videos=mp4_videos)
        log(f"mp4 encode/decode + packed eval {time.time() - t0:.0f}s")
        t0 = time.time()
        mp4_generate, gen_totals = evaluate_generate(model, processor, specs, mp4_videos, args.generate_check)
        log(f"mp4 + model.generate on {sum(gen_totals.values())} questions {time.time() - t0:.0f}s")
        t0 = time.time()
        text_generate, _ = evaluate_generate(model, processor, specs, [None] * len(specs), args.generate_check)
        log(f"no video + model.generate {time.time() - t0:.0f}s")
    table = {
        "in_context (rendered frames)": in_context,
        "in_context (mp4, packed)": mp4_packed,
        "in_context (mp4, generate)": mp4_generate,
        "no_video (packed)": no_video,
        "no_video (generate)": text_generate,
        "answer_prior": prior,
    }
    log(f"{'condition':32s} " + " ".join(f"{k:>9s}" for k in (*KINDS, "all", "caption")))
    for name, acc in table.items():
        overall = sum(acc[k] * totals[k] for k in KINDS) / sum(totals[k] for k in KINDS)
        acc["all"] = overall
        cells = " ".join(f"{acc[k]:9.3f}" if k in acc else f"{'-':>9s}" for k in (*KINDS, "all", "caption"))
        log(f"{name:32s} {cells}")
    return {"test_clips": args.test_clips, "test_questions": totals, "test_accuracy": table}


if __name__ == "__main__":
    sys.exit(main())
