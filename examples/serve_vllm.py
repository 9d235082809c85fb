"""Internalize videos with peft-hyper, serve their adapters with vLLM, and ask questions through the server.

    bash scripts/setup_vllm.sh                       # once: the vLLM environment, .venv-vllm
    python examples/serve_vllm.py                    # starts a server on the embedded default, asks, stops it
    python examples/serve_vllm.py --url http://127.0.0.1:8000   # or use one started with `frames2lora serve`

The videos are the held-out sample clips shipped with the package (`src/peft_hyper/samples`); each becomes a plain PEFT
LoRA directory (as `frames2lora internalize` writes), is loaded into the running server at runtime
(`POST /v1/load_lora_adapter`) and answers its clip's questions, all clips' questions sent at once so that vLLM
batches them across adapters. docs/serving.md explains each step.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from pathlib import Path

from peft import AutoPeftModel

from peft_hyper.cli import default_model, sample_clips
from peft_hyper.serving import VllmClient, VllmServer, vllm_serve_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Frames2LoRA checkpoint (default: the embedded one)")
    parser.add_argument("--url", default=None, help="a running server (default: start one for this run)")
    parser.add_argument("--port", type=int, default=8000, help="port of the server this run starts")
    parser.add_argument("--out", type=Path, default=Path("outputs/serve_vllm"), help="where the adapters go")
    args = parser.parse_args()

    checkpoint = args.model or default_model()
    model = AutoPeftModel.from_pretrained(checkpoint).eval()
    clips = sample_clips()
    adapters = {}
    for name, (video, _) in clips.items():
        start = time.perf_counter()
        model.internalize(str(video), adapter_name=name)
        model.save_adapter(name, args.out / name)
        adapters[name] = args.out / name
        print(f"internalized {video.name} -> {args.out / name} ({time.perf_counter() - start:.2f}s)")

    with ExitStack() as stack:
        if args.url is None:
            serve_args = vllm_serve_args(model.peft_config["default"], port=args.port)
            print(f"starting vLLM (about a minute on a CPU): {serve_args.vllm_serve_command()}")
            server = stack.enter_context(VllmServer(serve_args))
            client = server.client()
        else:
            client = VllmClient(args.url)
        for name, directory in adapters.items():
            client.load_adapter(name, directory)  # checked against the server's base and rank limit first
        print(f"the server has {len(client.adapters())} adapters: {', '.join(sorted(client.adapters()))}")

        rows = [(name, qa) for name, (_, truth) in clips.items() for qa in truth["questions"]]
        start = time.perf_counter()
        answers = client.answer([qa["question"] for _, qa in rows], adapter_names=[name for name, _ in rows])
        seconds = time.perf_counter() - start
        for (name, qa), answer in zip(rows, answers, strict=True):
            verdict = "ok" if answer == qa["answer"] else f"expected {qa['answer']}"
            print(f"{name:<18} {qa['question']:<62} {answer:<16} ({verdict})")
        correct = sum(answer == qa["answer"] for (_, qa), answer in zip(rows, answers, strict=True))
        print(f"{correct}/{len(rows)} correct, {len(rows)} answers in {seconds:.2f}s through the server")


if __name__ == "__main__":
    main()
