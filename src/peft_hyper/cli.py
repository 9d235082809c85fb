"""The `frames2lora` command: internalize a video, ask questions adapter-only, evaluate against video-in-context.

frames2lora demo                                      # the shipped sample clip, all three conditions, vs truth
frames2lora ask VIDEO "question" ... [--compare] [--json]
frames2lora ask ADAPTER_DIR "question" ...            # a saved adapter: the video is not touched
frames2lora internalize VIDEO -o DIR
frames2lora eval --data MANIFEST.jsonl|DATASET --metrics exact_match,token_f1 --margin 0.05 --out report/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

DEFAULT_MODEL_ENV = "FRAMES2LORA_MODEL"


def default_model() -> str | None:
    """The embedded default checkpoint shipped with the package, if present (overridable with $FRAMES2LORA_MODEL)."""
    if os.environ.get(DEFAULT_MODEL_ENV):
        return os.environ[DEFAULT_MODEL_ENV]
    shipped = Path(__file__).parent / "checkpoints" / "frames2lora-synthetic"
    return str(shipped) if (shipped / "adapter_config.json").is_file() else None


def load_model(model_id: str | None) -> Any:
    """A Frames2LoRA checkpoint (local dir or Hub id) as a PeftModel in eval mode."""
    from peft import AutoPeftModel

    import peft_hyper  # noqa: F401  (registers the HYPERLORA peft type)

    model_id = model_id or default_model()
    if model_id is None:
        raise SystemExit("error: no --model given and no embedded default checkpoint is installed.")
    if os.path.isdir(model_id) and not os.path.isfile(os.path.join(model_id, "adapter_config.json")):
        raise SystemExit(f"error: '{model_id}' has no adapter_config.json; pass a Frames2LoRA checkpoint directory.")
    return AutoPeftModel.from_pretrained(model_id).eval()


def _text_inputs(model: Any, question: str) -> dict[str, Any]:
    processor = model.base_model.processor
    conversation = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return {k: v.to(model.device) for k, v in processor(text=[prompt], return_tensors="pt").items()}


def _answer(generate: Any, inputs: dict[str, Any], processor: Any, max_new_tokens: int) -> tuple[str, float, int]:
    """(answer, time to first token in seconds, visual tokens in context)."""
    import torch

    visual = int((inputs["input_ids"] == processor.image_token_id).sum())
    with torch.no_grad():
        start = time.perf_counter()
        generate(**inputs, max_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - start
        output = generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()
    return answer, ttft, visual


def ask(
    model: Any,
    source: str | Path,
    questions: list[str],
    compare: bool = False,
    frames: int | None = None,
    max_new_tokens: int = 16,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Internalize `source` (a video, or a dir written by `frames2lora internalize`) and answer `questions`
    adapter-only; with `compare`, also with the video in context and with no video. Returns (timings, rows)."""
    from safetensors.torch import load_file

    from .video import load_video

    tuner = model.base_model
    processor = tuner.processor
    source = Path(source)
    from_adapter = source.is_dir() and (source / "adapter_model.safetensors").is_file()
    timings: dict[str, float] = {}
    if from_adapter:
        start = time.perf_counter()
        tuner.load_generated_adapter(load_file(source / "adapter_model.safetensors"), "video")
        timings["load_adapter_s"] = time.perf_counter() - start
        video = None
    else:
        start = time.perf_counter()
        video = load_video(source, num_frames=frames or tuner.hyper_config.num_frames)
        tuner.internalize(video, adapter_name="video")
        timings["internalize_s"] = time.perf_counter() - start
    if compare and video is None:
        raise SystemExit("error: --compare needs a video (the in-context answer reads it), not an adapter dir.")

    rows = []
    for question in tqdm(questions, desc="questions", disable=len(questions) < 4, leave=False):
        row: dict[str, Any] = {"question": question}
        answer, ttft, visual = _answer(model.generate, _text_inputs(model, question), processor, max_new_tokens)
        row["adapter"] = {"answer": answer, "ttft_s": ttft, "visual_tokens": visual}
        if compare:
            with tuner.generated_adapters_disabled():
                answer, ttft, visual = _answer(
                    tuner.model.generate, tuner.video_inputs([video], question, True), processor, max_new_tokens
                )
                row["in_context"] = {"answer": answer, "ttft_s": ttft, "visual_tokens": visual}
                answer, ttft, visual = _answer(
                    tuner.model.generate, _text_inputs(model, question), processor, max_new_tokens
                )
                row["no_video"] = {"answer": answer, "ttft_s": ttft, "visual_tokens": visual}
        rows.append(row)
    return timings, rows


def print_table(timings: dict[str, float], rows: list[dict[str, Any]]) -> None:
    """Side-by-side table: per question and condition, visual tokens in context, TTFT and the answer."""
    for name, seconds in timings.items():
        print(f"{name.removesuffix('_s').replace('_', ' ')}: {seconds:.2f}s")
    conditions = [c for c in ("adapter", "in_context", "no_video") if c in rows[0]]
    truth = "truth" in rows[0]
    width = min(64, max(len("question"), *(len(row["question"]) for row in rows)))
    header = f"{'question':<{width}} {'condition':<11} {'visual tok':>10} {'TTFT':>8}  answer"
    print(header + ("  (truth)" if truth else "") + "\n" + "-" * (len(header) + (9 if truth else 0)))
    for row in rows:
        for index, condition in enumerate(conditions):
            cell = row[condition]
            line = (
                f"{row['question'][:width] if index == 0 else '':<{width}} {condition:<11} "
                f"{cell['visual_tokens']:>10} {cell['ttft_s'] * 1000:>6.0f}ms  {cell['answer']}"
            )
            if truth:
                line += f"  ({'ok' if cell['answer'] == row['truth'] else 'expected ' + row['truth']})"
            print(line)


def cmd_ask(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    timings, rows = ask(model, args.source, args.questions, args.compare, args.frames, args.max_new_tokens)
    if args.json:
        print(json.dumps({"source": str(args.source), **timings, "answers": rows}, indent=2))
    else:
        print_table(timings, rows)
    return 0


def sample_clip() -> tuple[Path, dict[str, Any]]:
    """The sample clip shipped with the package (a held-out synthetic-world clip) and its ground truth."""
    folder = Path(__file__).parent / "samples"
    return folder / "synthetic_clip.mp4", json.loads((folder / "synthetic_clip.json").read_text(encoding="utf-8"))


def cmd_demo(args: argparse.Namespace) -> int:
    video, truth = sample_clip()
    model = load_model(args.model)
    qas = truth["questions"]
    timings, rows = ask(model, video, [qa["question"] for qa in qas], compare=True)
    for row, qa in zip(rows, qas, strict=True):
        row["truth"] = qa["answer"]
    if args.json:
        print(json.dumps({"source": str(video), "caption": truth["caption"], **timings, "answers": rows}, indent=2))
        return 0
    print(f"video: {video} ({truth['num_frames']} frames, {truth['size']}px)")
    print(f"caption (ground truth): {truth['caption']}")
    print_table(timings, rows)
    for condition in ("adapter", "in_context", "no_video"):
        correct = sum(row[condition]["answer"] == row["truth"] for row in rows)
        print(f"{condition:<11} {correct}/{len(rows)} correct")
    return 0


def cmd_internalize(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    start = time.perf_counter()
    model.internalize(args.video, adapter_name="video", num_frames=args.frames)
    model.save_adapter("video", args.output)
    print(f"wrote a PEFT LoRA adapter to {args.output} ({time.perf_counter() - start:.2f}s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.runner import evaluate_adapters, load_eval_items

    model = load_model(args.model)
    items = load_eval_items(args.data, split=args.split)
    if args.limit:
        items = items[: args.limit]
    run = evaluate_adapters(
        model,
        items,
        metrics=[m for m in args.metrics.split(",") if m],
        margin=args.margin,
        controls=[c for c in args.controls.split(",") if c],
        frames=[int(f) for f in args.frames.split(",")],
        sizes=[int(s) if s != "native" else None for s in args.sizes.split(",")],
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        output_dir=args.out,
        seed=args.seed,
    )
    print(run.report.markdown.read_text(encoding="utf-8"))
    if run.excluded:
        print(f"{len(run.excluded)} item(s) excluded (unreadable video); see {run.report.json}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    model_help = "Frames2LoRA checkpoint dir or Hub id (default: the embedded checkpoint)"
    parser = argparse.ArgumentParser(prog="frames2lora", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help=model_help)
    # `--model` is also accepted after the subcommand; SUPPRESS keeps a value given before it when absent there.
    model_option = argparse.ArgumentParser(add_help=False)
    model_option.add_argument("--model", default=argparse.SUPPRESS, help=model_help)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        parents=[model_option],
        help="the shipped sample clip: adapter vs in-context vs no video, against truth",
    )
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.set_defaults(func=cmd_demo)

    ask = sub.add_parser(
        "ask", parents=[model_option], help="internalize a video (or load a saved adapter) and answer questions"
    )
    ask.add_argument("source", help="a video file, or a directory written by `frames2lora internalize`")
    ask.add_argument("questions", nargs="+")
    ask.add_argument("--compare", action="store_true", help="also answer with the video in context and with none")
    ask.add_argument("--json", action="store_true", help="machine-readable output")
    ask.add_argument("--frames", type=int, default=None, help="frames to sample (default: the checkpoint's)")
    ask.add_argument("--max-new-tokens", type=int, default=16)
    ask.set_defaults(func=cmd_ask)

    internalize = sub.add_parser(
        "internalize", parents=[model_option], help="write a video's adapter as a plain PEFT LoRA directory"
    )
    internalize.add_argument("video")
    internalize.add_argument("-o", "--output", required=True)
    internalize.add_argument("--frames", type=int, default=None)
    internalize.set_defaults(func=cmd_internalize)

    evaluate = sub.add_parser(
        "eval", parents=[model_option], help="adapter-only vs video-in-context, with negative controls"
    )
    evaluate.add_argument("--data", required=True, help="a JSONL manifest, a saved dataset dir, or a dataset name")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--metrics", default="exact_match,token_f1")
    evaluate.add_argument("--margin", type=float, required=True, help="pre-registered equivalence margin (> 0)")
    evaluate.add_argument("--controls", default="no_video,bias_only,shuffled")
    evaluate.add_argument("--frames", default="12", help="comma-separated frame counts; the first is the main one")
    evaluate.add_argument("--sizes", default="native", help="comma-separated longest edges in px, or 'native'")
    evaluate.add_argument("--max-new-tokens", type=int, default=16)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", required=True, help="report directory (also caches predictions)")
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import PeftHyperError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PeftHyperError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
