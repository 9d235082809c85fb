"""App start-up: seconds from running `frames2lora app` to the page being served (HTTP 200 on `/`).

Each run starts the command in a fresh process on a free port of 127.0.0.1 (imports, checkpoint loading, building
the page and starting the server all count), polls `/` every 0.1 s, records the time and stops the server. Example:

    python benchmarks/app_startup.py --repeats 3                # the embedded default
    python benchmarks/app_startup.py --model CKPT --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seconds_to_page(model: str | None, timeout: float = 300) -> float:
    """Start `frames2lora app` and return the seconds until its page is served; the server is stopped after."""
    port = free_port()
    command = [sys.executable, "-m", "peft_hyper.cli", "app", "--host", "127.0.0.1", "--port", str(port)]
    if model:
        command[3:3] = ["--model", model]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}: {process.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"no page after {timeout} s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    runs = [seconds_to_page(args.model) for _ in range(args.repeats)]
    result = {
        "model": args.model or "embedded default",
        "seconds": runs,
        "median_s": statistics.median(runs),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"frames2lora app → page served: {', '.join(f'{s:.1f}' for s in runs)} s (median {result['median_s']:.1f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
