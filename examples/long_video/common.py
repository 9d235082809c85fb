"""What the long-video experiments share: their command line, the videos and questions they read, and how they
score and summarise answers (exact match per question kind)."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import load_from_disk

from peft_hyper import Video
from peft_hyper.cli import load_model
from peft_hyper.testing.long_world import render_long_spec_video

Hits = dict[str, dict[str, list[bool]]]  # condition → question kind → one hit per question


def parser(description: str, videos: int) -> argparse.ArgumentParser:
    """The options every experiment takes (`--model`, `--data`, `--videos`, `--segment-frames`, `--threads`,
    `--out`); add its own to the result."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded one)")
    parser.add_argument("--data", required=True, help="a saved long-world dataset (make_long_eval_sets.py)")
    parser.add_argument("--videos", type=int, default=videos, help="the first N videos of the set")
    parser.add_argument("--segment-frames", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the summary as JSON here")
    return parser


def load_tuner(args: argparse.Namespace) -> Any:
    """The `HyperLoraModel` of `--model`, on `--threads` threads."""
    torch.set_num_threads(args.threads)
    return load_model(args.model).base_model


def videos_and_questions(args: argparse.Namespace) -> Iterator[tuple[str, Video, list[dict[str, Any]]]]:
    """The first `--videos` long videos of `--data`: (spec, the video at 1 fps, its questions without captions)."""
    rows = [row for row in load_from_disk(args.data) if row["task_type"] != "caption"]
    for spec in list(dict.fromkeys(row["spec"] for row in rows))[: args.videos]:
        questions = [row for row in rows if row["spec"] == spec]
        yield spec, render_long_spec_video(spec, questions[0]["num_frames"], questions[0]["size"]), questions


def new_hits(conditions: Sequence[str]) -> Hits:
    return {name: defaultdict(list) for name in conditions}


def exact_match(answer: str, target: str) -> bool:
    """The experiments' scoring rule: the answer equals the target, case-insensitive, surrounding spaces ignored."""
    return answer.strip().lower() == target.strip().lower()


def score(
    hits: Hits,
    condition: str,
    questions: Sequence[Mapping[str, Any]],
    answers: Sequence[str],
    by_id: dict[str, bool] | None = None,
) -> None:
    """Record exact match (case-insensitive, stripped) of each answer under `condition`, by question kind (and in
    `by_id`, question id → hit, for paired comparisons with another report)."""
    for question, answer in zip(questions, answers, strict=True):
        hit = exact_match(answer, question["target"])
        hits[condition][question["task_type"]].append(hit)
        if by_id is not None:
            by_id[question["id"]] = hit


def summarise(hits: Hits, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Exact match per condition (all questions, then per kind), printed as a table and written to `--out`."""
    summary: dict[str, Any] = {"model": args.model or "embedded", "data": args.data, "videos": args.videos, **extra}
    summary["conditions"] = {}
    for name, kinds in hits.items():
        every = [hit for values in kinds.values() for hit in values]
        summary["conditions"][name] = {
            "all": sum(every) / max(len(every), 1),
            "n": len(every),
            **{kind: sum(v) / len(v) for kind, v in sorted(kinds.items())},
        }
    kinds = sorted({kind for by_kind in hits.values() for kind in by_kind})
    print(f"{'kind':18s}" + "".join(f"{name:>18s}" for name in hits))
    for kind in [*kinds, "all"]:
        cells = [summary["conditions"][name].get(kind) for name in hits]
        print(f"{kind:18s}" + "".join(f"{c:18.3f}" if c is not None else f"{'-':>18s}" for c in cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2, default=float))
    return summary
