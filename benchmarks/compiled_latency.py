"""Query latency under `torch.compile` vs eager, with newly generated adapters hot-swapped in (no recompiles).

The embedded default (or `--model`) answers adapter-only questions — zero visual tokens — through the `PeftModel`,
once as it is (eager) and once compiled as a user compiles it (`torch.compile(model)`, inductor by default). Both run
the same greedy loop over a `DynamicCache`: a prefill forward over the prompt, then one forward per new token, with
the position ids `generate` derives from the attention mask (so the left-padded mixed batch answers as `generate`
does; the eager loop is checked against `generate`). Measured, after a warm-up that compiles every shape:

* TTFT: the prefill and the first token's choice (as `ttft.py`'s `generate(max_new_tokens=1)`);
* answer: `--new-tokens` greedy tokens (end-of-sequence not stopped at, so every repeat does the same work);
* the same two for a mixed-adapter batch (`adapter_names=["slot", "other"]`, two questions, PEFT's mixed batch);
* the first call of each query: the compile (inductor's on-disk cache in a fresh directory unless
  `--inductor-cache`, so a cold compile);
* hot-swaps: `--swaps` new clips internalized into the existing names (`internalize(clip, adapter_name="slot")` and
  `load_generated_adapter(..., "other")`), each followed by compiled queries. Recompiles are counted with dynamo's own
  counters (`torch._dynamo.utils.counters["stats"]["unique_graphs"]`, as `tests/test_compiled_hotswap.py` does), and
  the compiled answers are compared token by token with the eager model's after every swap.

Eager and compiled repeats are interleaved so that both see the same machine load. Example (the figures in
docs/benchmarks.md):

    python benchmarks/compiled_latency.py --repeats 40 --new-tokens 8 --swaps 4 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QUESTIONS = ("How many objects are there?", "Which way does the red object move?")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a Frames2LoRA checkpoint dir (default: the embedded default)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend ('eager' for a quick check)")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default: torch's)")
    parser.add_argument(
        "--inductor-cache",
        default=None,
        help="TORCHINDUCTOR_CACHE_DIR to compile into (default: a fresh temporary one, so that the first call's time "
        "is a cold compile; pass a kept directory to time a restart with a warm cache)",
    )
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per answer")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per query (median reported)")
    parser.add_argument("--swaps", type=int, default=4, help="hot-swaps of newly internalized clips")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="clip height and width in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output path (default: benchmarks/results/)")
    parser.add_argument("--tag", default="", help="suffix for the default JSON file name")
    args = parser.parse_args(argv)
    args.device = "cpu"
    return args


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


# ---------------------------------------------------------------------------------------------------- the greedy loop
def greedy(
    forward: Callable[..., Any], inputs: dict[str, torch.Tensor], new_tokens: int, **kwargs: Any
) -> torch.Tensor:
    """`new_tokens` greedy tokens `(B, new_tokens)` from `forward` (a PeftModel, compiled or not), with a KV cache.

    Position ids follow the attention mask as `generate` computes them (left padding: each row counts from its first
    real token), so a padded batch answers as `generate` answers it."""
    from transformers import DynamicCache

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    tokens = []
    with torch.no_grad():
        for _ in range(new_tokens):
            out = forward(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
            ids = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(ids)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
    return torch.cat(tokens, dim=1)


def generated(model: Any, inputs: dict[str, torch.Tensor], new_tokens: int, **kwargs: Any) -> torch.Tensor:
    """The new tokens `generate` picks greedily (stopping at end of sequence; stopped rows padded)."""
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, **kwargs)
    return output[:, inputs["input_ids"].shape[1] :]


def same_until_end(tokens: torch.Tensor, reference: torch.Tensor, eos: int | list[int] | None) -> bool:
    """Whether every row of `tokens` equals `reference`'s up to and including its first end-of-sequence token."""
    ends = {eos} if isinstance(eos, int) else set(eos or ())
    for row, ref in zip(tokens.tolist(), reference.tolist(), strict=True):
        stop = next((i + 1 for i, token in enumerate(ref) if token in ends), len(ref))
        if row[:stop] != ref[:stop]:
            return False
    return True


def timed_greedy(forward, inputs, new_tokens, **kwargs) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    tokens = greedy(forward, inputs, new_tokens, **kwargs)
    return time.perf_counter() - start, tokens


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup(args)
    from peft_hyper.cli import load_model
    from peft_hyper.testing.world import clip_seed, sample_spec, write_clip

    result: dict[str, Any] = {
        "benchmark": "compiled_latency",
        "args": vars(args),
        "machine": common.machine_info("cpu"),
        "definitions": {
            "ttft": "prefill forward + argmax of the first token (greedy loop, DynamicCache)",
            "answer": f"{args.new_tokens} greedy tokens, end-of-sequence not stopped at",
        },
    }
    model = load_model(args.model)
    tuner = model.base_model
    n = args.new_tokens
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        # inductor keeps compiled kernels on disk between processes: a fresh directory times a cold compile
        cache = args.inductor_cache or str(Path(tmp) / "inductor")
        stack.enter_context(mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": cache}))
        result["inductor_cache"] = args.inductor_cache or "fresh (temporary)"
        clips = [
            str(
                write_clip(
                    sample_spec(clip_seed(args.seed, "compiled", i)), Path(tmp) / f"{i}.mp4", args.frames, args.size
                )
            )
            for i in range(2 + 2 * args.swaps)
        ]
        tuner.internalize(clips[0], adapter_name="slot")
        tuner.internalize(clips[1], adapter_name="other", activate=False)
        tuner.set_adapter("slot")
        single = tuner.text_inputs([QUESTIONS[0]])
        mixed = tuner.text_inputs(list(QUESTIONS))
        names = {"adapter_names": ["slot", "other"]}

        # The eager loop is `generate`'s greedy search: the same tokens up to `generate`'s end of sequence.
        eos = model.generation_config.eos_token_id
        result["eager_loop_matches_generate"] = all(
            same_until_end(greedy(model, inputs, n, **kwargs), generated(model, inputs, n, **kwargs), eos)
            for inputs, kwargs in ((single, {}), (mixed, names))
        )

        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
        compiled = torch.compile(model, backend=args.backend, mode=args.mode)
        queries = {
            "ttft": (single, 1, {}),
            "answer": (single, n, {}),
            "mixed_ttft": (mixed, 1, names),
            "mixed_answer": (mixed, n, names),
        }
        warmup = {}
        for key, (inputs, tokens, kwargs) in queries.items():  # compiles every shape, twice to settle dynamic shapes
            first, _ = timed_greedy(compiled, inputs, tokens, **kwargs)
            second, _ = timed_greedy(compiled, inputs, tokens, **kwargs)
            warmup[key] = {"first_s": first, "second_s": second, "graphs_after": unique_graphs()}
            print(
                f"warm-up {key}: first call {first:.1f} s, second {second:.3f} s, graphs {unique_graphs()}", flush=True
            )
        result["warmup"] = warmup
        graphs = unique_graphs()

        times: dict[str, dict[str, list[float]]] = {key: {"eager": [], "compiled": []} for key in queries}
        mismatches = 0
        for repeat in range(args.repeats):
            for key, (inputs, tokens, kwargs) in queries.items():
                order = (("eager", model), ("compiled", compiled))
                outputs = {}
                for label, forward in order if repeat % 2 == 0 else order[::-1]:
                    seconds, outputs[label] = timed_greedy(forward, inputs, tokens, **kwargs)
                    times[key][label].append(seconds)
                mismatches += not torch.equal(outputs["eager"], outputs["compiled"])
        graphs_timed = unique_graphs()

        # Hot-swaps: new videos into the existing names, then compiled queries; no new graph may appear.
        swaps = []
        for swap in range(args.swaps):
            start = time.perf_counter()
            tuner.internalize(clips[2 + 2 * swap], adapter_name="slot")
            internalize_s = time.perf_counter() - start
            state_dict = tuner.generate_adapter(clips[3 + 2 * swap])
            start = time.perf_counter()
            tuner.load_generated_adapter(state_dict, "other", activate=False)
            replace_s = time.perf_counter() - start
            tuner.set_adapter("slot")
            row = {"swap": swap, "internalize_s": internalize_s, "replace_s": replace_s}
            for key, (inputs, tokens, kwargs) in queries.items():
                seconds, got = timed_greedy(compiled, inputs, tokens, **kwargs)
                _, expected = timed_greedy(model, inputs, tokens, **kwargs)
                row[f"{key}_compiled_s"] = seconds
                row[f"{key}_matches_eager"] = bool(torch.equal(got, expected))
            row["graphs"] = unique_graphs()
            swaps.append(row)
            print(
                f"swap {swap}: internalize into 'slot' {internalize_s * 1e3:.0f} ms, replace 'other' "
                f"{replace_s * 1e3:.1f} ms; compiled answer {row['answer_compiled_s'] * 1e3:.1f} ms, graphs {row['graphs']}",
                flush=True,
            )
    result["swaps"] = swaps
    result["recompiles"] = {
        "graphs_after_warmup": graphs,
        "graphs_after_timed_repeats": graphs_timed,
        "graphs_after_swaps": unique_graphs(),
        "new_graphs_during_swaps": unique_graphs() - graphs_timed,
        "graph_breaks": graph_breaks(),
    }
    result["compiled_matches_eager"] = mismatches == 0 and all(
        row[f"{key}_matches_eager"] for row in swaps for key in queries
    )
    rows = []
    for key, label in (
        ("ttft", "TTFT, 1 question"),
        ("answer", f"answer ({n} tokens), 1 question"),
        ("mixed_ttft", "TTFT, mixed batch of 2 adapters"),
        ("mixed_answer", f"answer ({n} tokens), mixed batch of 2 adapters"),
    ):
        eager, compiled_s = common.median(times[key]["eager"]), common.median(times[key]["compiled"])
        rows.append(
            {
                "query": label,
                "key": key,
                "eager_ms": eager * 1e3,
                "compiled_ms": compiled_s * 1e3,
                "speedup": eager / compiled_s,
                "after_swap_ms": common.median([row[f"{key}_compiled_s"] for row in swaps]) * 1e3 if swaps else None,
                "compile_s": warmup[key]["first_s"],
                "eager_all_ms": [t * 1e3 for t in times[key]["eager"]],
                "compiled_all_ms": [t * 1e3 for t in times[key]["compiled"]],
            }
        )
    result["rows"] = rows
    result["table"] = common.print_table(
        rows,
        [
            ("query", "query"),
            ("eager_ms", "eager (ms)"),
            ("compiled_ms", "compiled (ms)"),
            ("speedup", "eager / compiled"),
            ("after_swap_ms", "compiled after a hot-swap (ms)"),
            ("compile_s", "first call, compiling (s)"),
        ],
        title=f"Compiled ({args.backend}) vs eager, median of {args.repeats}",
    )
    rc = result["recompiles"]
    print(
        f"graphs: {rc['graphs_after_warmup']} after warm-up, {rc['graphs_after_swaps']} after {args.swaps} hot-swaps "
        f"(new: {rc['new_graphs_during_swaps']}); compiled tokens equal eager: {result['compiled_matches_eager']}; "
        f"eager loop equals generate: {result['eager_loop_matches_generate']}"
    )
    common.finish(result, args.out or common.output_path(args, "compiled_latency"))


if __name__ == "__main__":
    main()
