"""Train a segment router (`peft_hyper.routing`) for a Frames2LoRA checkpoint and save the checkpoint with it.

    python examples/long_video/train_router.py --model src/peft_hyper/checkpoints/frames2lora-synthetic \
        --output outputs/router

The router reads the frozen base's states of a question (no video) and says which time of the video it names, if any.
It is supervised by the long world's questions (`peft_hyper.testing.long_world`, train split): single-scene questions
name their scene by a time cue (label: the cue second), cross-scene questions and the clip world's questions name none.
Only questions are needed, no video is rendered, and the hypernetwork is untouched: its weights are copied as they are.
Held-out questions (the test split's seeds, lengths of `--eval-frames`) measure how often the router picks the
12-frame segment holding the cue, and how often it tells timed from untimed questions.

A router reads the base alone, so one trained for a checkpoint serves every hypernetwork on the same base:
`--router_from ROUTED_CHECKPOINT` copies its router instead of training one (`--steps` ignored).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import AutoModelForImageTextToText

from peft_hyper.cli import load_model
from peft_hyper.routing import NO_TIME, router_loss
from peft_hyper.saving import atomic_directory
from peft_hyper.testing.long_world import long_questions, long_seed, sample_long_spec
from peft_hyper.testing.world import clip_seed, questions, sample_spec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="src/peft_hyper/checkpoints/frames2lora-synthetic")
    parser.add_argument("--output", required=True)
    parser.add_argument("--router_from", default=None, help="copy the router of this checkpoint (same base)")
    parser.add_argument("--router_layer", type=int, default=1)
    parser.add_argument("--router_dim", type=int, default=128)
    parser.add_argument("--videos", type=int, default=1200, help="training videos, spread over --frames")
    parser.add_argument("--frames", default="48,96,192,384,768,1024,1536,2048")
    parser.add_argument("--clips", type=int, default=1200, help="clip-world clips whose questions name no time")
    parser.add_argument("--eval_videos", type=int, default=40, help="held-out videos per length of --eval_frames")
    parser.add_argument("--eval_frames", default="48,192,1024")
    parser.add_argument("--segment_frames", type=int, default=12, help="segments the held-out accuracy is over")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def long_rows(split: str, count: int, lengths: list[int], seed: int) -> list[tuple[str, int, int]]:
    """(question, cue second or NO_TIME, video frames) for `count` long videos spread over `lengths`."""
    rows = []
    for index in range(count):
        frames = lengths[index % len(lengths)]
        spec = sample_long_spec(long_seed(seed, split, frames, index), frames)
        for qa in long_questions(spec, scene_questions=12, count_questions=2, order_questions=2):
            rows.append((qa.question, NO_TIME if qa.cue_time is None else qa.cue_time, frames))
        rows.append(("Describe the video.", NO_TIME, frames))
    return rows


def clip_rows(split: str, count: int, seed: int) -> list[tuple[str, int, int]]:
    return [
        (qa.question, NO_TIME, 12) for i in range(count) for qa in questions(sample_spec(clip_seed(seed, split, i)))
    ]


def with_router(model, layer: int, dim: int):
    """The checkpoint's hypernetwork, weights copied as they are, with a new segment router beside it."""
    config = copy.deepcopy(model.peft_config["default"])
    config.router_layer, config.router_dim = layer, dim
    base = AutoModelForImageTextToText.from_pretrained(model.base_model.model.name_or_path).eval()
    routed = get_peft_model(base, config)
    missing, unexpected = routed.base_model.hypernetwork.load_state_dict(
        model.base_model.hypernetwork.state_dict(), strict=False
    )
    if unexpected or any(not name.startswith("router.") for name in missing):
        raise RuntimeError(f"not the same hypernetwork: missing {missing}, unexpected {unexpected}")
    routed.base_model.set_processor(model.base_model.processor)
    return routed.eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two base models hold the same weights (a router trained on one reads the other's states alike)."""
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def question_states(tuner, rows, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The router's inputs for `rows`, padded to one length: states `(N, S, hidden)`, mask `(N, S)`."""
    parts = [
        tuner.question_states([q for q, _, _ in rows[i : i + batch_size]]) for i in range(0, len(rows), batch_size)
    ]
    length = max(states.shape[1] for states, _ in parts)
    states = torch.cat([F.pad(s, (0, 0, 0, length - s.shape[1])) for s, _ in parts])
    mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m in parts])
    return states, mask


@torch.no_grad()
def held_out(router, states, mask, rows, segment_frames: int) -> dict[str, float]:
    """Per length: how often the segment with the most probability holds the cue (timed questions), and how often
    the no-time probability is on the right side of 0.5 (all questions)."""
    results = {}
    for frames in sorted({f for _, _, f in rows}):
        index = [i for i, (_, _, f) in enumerate(rows) if f == frames]
        cues = torch.tensor([rows[i][1] for i in index])
        starts = torch.arange(0, frames, segment_frames, dtype=torch.float32)
        probabilities = router.segment_probabilities(
            router(states[index], mask[index]), torch.arange(float(frames)), starts
        )
        timed = cues != NO_TIME
        chosen = probabilities[timed, :-1].argmax(dim=1)
        results[f"segment@{frames}"] = (chosen == cues[timed] // segment_frames).float().mean().item()
        results[f"no_time@{frames}"] = ((probabilities[:, -1] >= 0.5) == ~timed).float().mean().item()
    return results


def train(router, tuner, args: argparse.Namespace, test_states, test_mask, test) -> dict[str, float]:
    """Train `router` on the train split's questions; returns the last held-out scores."""
    lengths = [int(n) for n in args.frames.split(",")]
    rows = long_rows("train", args.videos, lengths, args.seed) + clip_rows("train", args.clips, args.seed)
    states, mask = question_states(tuner, rows)
    cues = torch.tensor([cue for _, cue, _ in rows])
    print(f"{len(rows)} training questions ({int((cues != NO_TIME).sum())} timed)")
    router.train()
    optimizer = torch.optim.AdamW(router.parameters(), lr=args.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.learning_rate, total_steps=args.steps, pct_start=max(0.05, 2 / args.steps)
    )
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        batch = torch.randint(len(rows), (args.batch_size,), generator=generator)
        loss = router_loss(router, router(states[batch], mask[batch]), cues[batch], max(lengths))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 1000 == 0 or step == args.steps:
            router.eval()
            scores = held_out(router, test_states, test_mask, test, args.segment_frames)
            router.train()
            print(f"step {step}: loss {loss.item():.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    router.eval()
    return scores


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    donor = load_model(args.router_from).base_model if args.router_from else None
    if donor is not None:
        args.router_layer, args.router_dim = donor.hyper_config.router_layer, donor.hyper_config.router_dim
    model = with_router(load_model(args.model), args.router_layer, args.router_dim)
    tuner, router = model.base_model, model.base_model.router
    test = long_rows("test", args.eval_videos * 3, [int(n) for n in args.eval_frames.split(",")], args.seed + 1)
    test_states, test_mask = question_states(tuner, test)
    if donor is not None:
        if not same_weights(donor.model, tuner.model):
            raise SystemExit(f"{args.router_from} reads another base ({donor.model.name_or_path}): train a router")
        router.load_state_dict(donor.router.state_dict())
        args.steps = 0
        scores = held_out(router.eval(), test_states, test_mask, test, args.segment_frames)
    else:
        scores = train(router, tuner, args, test_states, test_mask, test)
    print(", ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    summary = {"steps": args.steps, "minutes": (time.perf_counter() - start) / 60, **scores}
    # One swap at the end, so that --output may be --model itself (e.g. the shipped checkpoint).
    with atomic_directory(args.output) as staging:
        shutil.copytree(args.model, staging, dirs_exist_ok=True)  # the base, processor and card stay the checkpoint's
        with tempfile.TemporaryDirectory() as weights:
            model.save_pretrained(weights, selected_adapters=["default"])
            shutil.copy(Path(weights) / "adapter_model.safetensors", staging / "adapter_model.safetensors")
        saved = json.loads((staging / "adapter_config.json").read_text())
        saved.update(router_layer=args.router_layer, router_dim=args.router_dim)
        (staging / "adapter_config.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
        (staging / "router_training.json").write_text(json.dumps(summary, indent=2))
    output = args.output
    print(f"saved {output}; {summary['minutes']:.1f} min")


if __name__ == "__main__":
    main()
