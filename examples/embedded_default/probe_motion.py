"""Where is motion lost? Probe the frozen base's layer-input states (the hypernetwork's input) for motion direction.

An adapter can answer motion questions at chance while the base answers them with the video in context (hypernetworks 1
and 2 did; docs/embedded_default.md, "Where motion is lost", has the results). This script asks whether the states the
hypernetwork reads carry motion at all, and whether a perceiver's latent bottleneck keeps it. For each clip it runs the
base once under the checkpoint's internalization prompt (exactly the hypernetwork's forward; `--prompt` /
`--[no-]generation_prompt` try another) and keeps the states entering `--layers`; then it trains small read-out models
with direct supervision (no LoRA, no base in the loop), each answering "which way does the {colour} object move?"
(5-way) and, as a sanity check, "what shape is the {colour} object?" (3-way) from an object query:

- `direct`: the query cross-attends to every token's state (an upper bound: what attention over the context gets);
- `latentN`: a perceiver with N latents (the hypernetwork's own `Perceiver` and position features) reads the
  tokens first, and the query attends to its latents only (what an adapter built from N latents can hold).

Held-out accuracy per variant is printed (chance: motion 0.2, shape 0.33). Run time here (2 CPU threads, defaults):
about 2 min of feature extraction plus 1–2 min per variant (7 min in all).

    python examples/embedded_default/probe_motion.py --variants direct latent8 latent32
    python examples/embedded_default/probe_motion.py --prompt "Internalize this video for later captioning." \
        --no-generation_prompt   # the prompt hypernetwork 1 read
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from peft_hyper.cli import default_model, load_model
from peft_hyper.hidden_states import stream_decoder_layer_inputs
from peft_hyper.hypernetwork import HyperNetwork, position_features
from peft_hyper.perceiver import Attention, FeedForward, Perceiver
from peft_hyper.testing.world import (
    COLOURS,
    MOTIONS,
    SHAPES,
    T_MOTION,
    T_SHAPE,
    clip_seed,
    questions,
    sample_spec,
    write_clip,
)
from peft_hyper.video import load_video

KINDS = ("motion", "shape")
ANSWERS = {"motion": list(MOTIONS), "shape": list(SHAPES)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded default)")
    parser.add_argument("--workdir", default="outputs/probe_motion", help="where the clips' mp4s are written")
    parser.add_argument("--train_clips", type=int, default=2000)
    parser.add_argument("--test_clips", type=int, default=500)
    parser.add_argument("--layers", default="3,5", help="decoder layers whose input states are read")
    parser.add_argument("--variants", nargs="+", default=["direct", "latent8", "latent32"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--clips_per_step", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompt",
        default=None,
        help="instruction after the video (default: the checkpoint's `internalize_prompt`, as the hypernetwork reads)",
    )
    parser.add_argument(
        "--generation_prompt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="end with the assistant turn's opening (default without --prompt: the checkpoint's choice)",
    )
    return parser.parse_args()


def extract(
    model,
    split: str,
    num_clips: int,
    layers: list[int],
    workdir: Path,
    seed: int,
    prompt: str | None,
    generation_prompt: bool | None,
) -> dict:
    """States `(clips, len(layers), S, hidden)` (fp16), the token mask `(S,)`, and question rows
    `(clip, kind, colour, answer)` as a long tensor `(rows, 4)`."""
    tuner = model.base_model
    num_frames = tuner.hyper_config.num_frames
    states, rows = [], []
    for start in range(0, num_clips, 16):
        specs = [sample_spec(clip_seed(seed, split, i)) for i in range(start, min(num_clips, start + 16))]
        videos = []
        for i, spec in enumerate(specs, start):
            path = write_clip(spec, workdir / split / f"{i:06d}.mp4", num_frames, 64)
            videos.append(load_video(path, num_frames=num_frames))
        inputs = tuner.hypernetwork_inputs(
            videos, replace(tuner.input_spec, prompt=prompt, generation_prompt=generation_prompt)
        )
        captured: list[torch.Tensor] = []  # layers arrive in ascending order
        stream_decoder_layer_inputs(tuner.model, inputs, layers, lambda _, s, into=captured: into.append(s.half()))
        states.append(torch.stack(captured, dim=1))
        for i, spec in enumerate(specs, start):
            for qa in questions(spec):
                if qa.template in (T_MOTION, T_SHAPE):
                    kind = "motion" if qa.template == T_MOTION else "shape"
                    colour = qa.question.split(" the ")[1].split()[0]
                    rows.append((i, KINDS.index(kind), list(COLOURS).index(colour), ANSWERS[kind].index(qa.answer)))
    return {"states": torch.cat(states), "mask": inputs["attention_mask"][0].bool(), "rows": torch.tensor(rows)}


class ReadOut(nn.Module):
    """Object query (colour + question kind) → two cross-attention blocks over a memory → 5 logits.

    The memory is every token of each read layer (`num_latents=None`) or a perceiver's latents per layer."""

    def __init__(self, hidden: int, num_layers: int, dim: int, num_latents: int | None) -> None:
        super().__init__()
        self.context_norm, self.context_proj = nn.RMSNorm(hidden), nn.Linear(hidden, dim)
        self.position_proj = nn.Linear(HyperNetwork.num_position_features, dim)
        self.layer_embedding = nn.Embedding(num_layers, dim)
        self.perceiver = None if num_latents is None else Perceiver(dim, num_latents, depth=3, heads=4, head_dim=32)
        self.colour, self.kind = nn.Embedding(len(COLOURS), dim), nn.Embedding(len(KINDS), dim)
        self.blocks = nn.ModuleList(nn.ModuleList([Attention(dim, 4, 32), FeedForward(dim)]) for _ in range(2))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, len(MOTIONS)))

    def forward(self, states: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, clip_of_row: torch.Tensor):
        """states `(C, L, S, hidden)` of C clips, rows `(R, 4)`, clip_of_row `(R,)` → logits `(R, 5)`."""
        clips = states.shape[0]
        token_mask = mask[None].expand(clips, -1)
        positions = self.position_proj(position_features(token_mask, HyperNetwork.num_position_features))
        memory = []
        for layer in range(states.shape[1]):
            context = self.context_proj(self.context_norm(states[:, layer].float())) + positions
            offset = self.layer_embedding.weight[layer]
            if self.perceiver is None:
                memory.append(context + offset)
            else:
                memory.append(self.perceiver(context, token_mask, latent_offset=offset.expand(clips, -1)))
        memory = torch.cat(memory, dim=1)[clip_of_row]  # (R, M, dim)
        query = (self.colour(rows[:, 2]) + self.kind(rows[:, 1]))[:, None]
        for attention, feed_forward in self.blocks:
            query = query + attention(query, memory)
            query = query + feed_forward(query)
        logits = self.head(query[:, 0])
        shape_rows = rows[:, 1] == KINDS.index("shape")
        return logits.masked_fill(shape_rows[:, None] & (torch.arange(logits.shape[1]) >= len(SHAPES)), -1e9)


def accuracy(model: ReadOut, data: dict) -> dict[str, float]:
    model.eval()
    hits: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    with torch.no_grad():
        for start in range(0, len(data["states"]), 64):
            clips = torch.arange(start, min(start + 64, len(data["states"])))
            rows = data["rows"][torch.isin(data["rows"][:, 0], clips)]
            predicted = model(data["states"][clips], data["mask"], rows, rows[:, 0] - start).argmax(-1)
            for k, kind in enumerate(KINDS):
                hits[kind] += (predicted == rows[:, 3])[rows[:, 1] == k].tolist()
    model.train()
    return {kind: sum(h) / len(h) for kind, h in hits.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    layers = sorted({int(layer) for layer in args.layers.split(",")})
    model = load_model(args.model or default_model())
    start = time.perf_counter()
    workdir = Path(args.workdir)
    prompt = args.prompt, args.generation_prompt
    train = extract(model, "train", args.train_clips, layers, workdir, args.seed, *prompt)
    test = extract(model, "test", args.test_clips, layers, workdir, args.seed, *prompt)
    print(f"states of {args.train_clips} + {args.test_clips} clips, layers {layers}: "
          f"{time.perf_counter() - start:.0f}s; {len(train['rows'])} / {len(test['rows'])} questions")  # fmt: skip
    hidden = train["states"].shape[-1]

    results = {}
    for variant in args.variants:
        torch.manual_seed(args.seed)
        num_latents = None if variant == "direct" else int(variant.removeprefix("latent"))
        readout = ReadOut(hidden, len(layers), args.dim, num_latents)
        optimizer = torch.optim.AdamW(readout.parameters(), lr=1e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=args.steps, pct_start=0.1)
        began = time.perf_counter()
        for _ in range(args.steps):
            clips = torch.randperm(len(train["states"]))[: args.clips_per_step]
            rows = train["rows"][torch.isin(train["rows"][:, 0], clips)]
            clip_of_row = (rows[:, 0, None] == clips[None]).float().argmax(-1)
            logits = readout(train["states"][clips], train["mask"], rows, clip_of_row)
            loss = F.cross_entropy(logits, rows[:, 3])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        results[variant] = accuracy(readout, test)
        print(f"{variant:>10}: held-out motion {results[variant]['motion']:.3f}, shape {results[variant]['shape']:.3f} "
              f"({time.perf_counter() - began:.0f}s)", flush=True)  # fmt: skip
    print("\n| read-out | motion (chance 0.2) | shape (chance 0.33) |\n|---|---|---|")
    for variant, result in results.items():
        print(f"| {variant} | {result['motion']:.3f} | {result['shape']:.3f} |")


if __name__ == "__main__":
    main()
