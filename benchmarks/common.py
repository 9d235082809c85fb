"""Shared helpers for the peft-hyper benchmarks (not a library API; imported by the scripts in this folder).

Models are randomly initialised with the real SmolVLM2 architectures (`peft_hyper.testing.models.smolvlm2_config`) and
the real processor geometry (512px frames, 64 visual tokens per frame for 256M/500M) on a locally built tokenizer.
Random weights are fine for timing and memory: the FLOPs and tensor shapes are those of the real checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUESTION = "What happens in the video? Describe it in one sentence."
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


# ---------------------------------------------------------------------------------------------------- CLI
def base_parser(description: str, arch: list[str], frames: list[int], repeats: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--arch",
        nargs="+",
        default=arch,
        choices=["tiny", "256M", "500M", "2.2B"],
        help="SmolVLM2 architecture(s) (random weights); 'tiny' is the test-suite model",
    )
    parser.add_argument("--frames", nargs="+", type=int, default=frames, help="frame counts to sweep")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats per point (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of the VLM weights")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output path (default: benchmarks/results/)")
    parser.add_argument("--tag", default="", help="suffix for the default JSON file name")
    return parser


def setup(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import transformers

    transformers.logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")


def output_path(args: argparse.Namespace, name: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    suffix = f"_{args.tag}" if args.tag else ""
    return RESULTS_DIR / f"{name}{suffix}.json"


# ---------------------------------------------------------------------------------------------------- machine
def machine_info(device: str) -> dict[str, Any]:
    import peft
    import transformers

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "loadavg_start": os.getloadavg(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def finish(result: dict[str, Any], path: Path) -> None:
    result.setdefault("machine", {})["loadavg_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=_json_default))
    print(f"\nwrote {path}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


# ---------------------------------------------------------------------------------------------------- models
def build(
    arch: str,
    num_frames: int,
    device: str = "cpu",
    dtype: str = "fp32",
    seed: int = 0,
    peft: bool = True,
    hyper_kwargs: dict[str, Any] | None = None,
    vision_layers: int | None = None,
    text_layers: int | None = None,
) -> dict[str, Any]:
    """A randomly initialised SmolVLM of architecture `arch` with its processor, optionally wrapped by peft-hyper.

    Returns a dict with `vlm`, `processor`, `config` and, with `peft`, `model` (the PeftModel) and `tuner`.
    """
    from transformers import SmolVLMForConditionalGeneration

    import peft_hyper
    from peft_hyper.testing.models import (
        build_smolvlm_tokenizer,
        build_tiny_smolvlm,
        smolvlm2_config,
        smolvlm2_processor,
    )

    torch.manual_seed(seed)
    tokenizer = build_smolvlm_tokenizer()
    if arch == "tiny":
        overrides = {
            k: v for k, v in (("vision_layers", vision_layers), ("text_layers", text_layers)) if v is not None
        }
        vlm, processor = build_tiny_smolvlm(seed=seed, tokenizer=tokenizer, num_frames=num_frames, **overrides)
    else:
        config = smolvlm2_config(arch, tokenizer=tokenizer)
        processor = smolvlm2_processor(arch, tokenizer=tokenizer, num_frames=num_frames)
        if vision_layers is not None:  # depth-reduced proxies (memory_vs_frames.py)
            config.vision_config.num_hidden_layers = vision_layers
        if text_layers is not None:
            config.text_config.num_hidden_layers = text_layers
        vlm = SmolVLMForConditionalGeneration(config)
    vlm = vlm.to(device=device, dtype=DTYPES[dtype]).eval()
    out: dict[str, Any] = {"vlm": vlm, "processor": processor, "config": vlm.config, "arch": arch}
    if peft:
        from peft import get_peft_model

        if hyper_kwargs is None and arch == "tiny":  # a tiny hypernetwork for the tiny model (smoke tests)
            hyper_kwargs = {
                "r": 4,
                "latent_dim": 32,
                "num_latents": 4,
                "num_blocks": 1,
                "num_heads": 2,
                "head_dim": 16,
            }
        hyper_config = peft_hyper.HyperLoraConfig(num_frames=num_frames, **(hyper_kwargs or {}))
        model = get_peft_model(vlm, hyper_config)
        model.set_processor(processor)
        tuner = model.base_model
        # The default init makes B = 0 (ΔW = 0). Give the generated adapters non-zero B so that they are "real"
        # adapters (costs do not depend on the values, but a zero adapter could be special-cased some day).
        with torch.no_grad():
            for heads in tuner.hypernetwork.heads.values():
                heads.scale_b.fill_(1e-3)
        out.update(model=model, tuner=tuner)
    return out


def video_geometry(arch: str) -> tuple[int, int]:
    """(height, width) of the synthetic source video: 360p for real architectures, small for tiny."""
    return (32, 48) if arch == "tiny" else (360, 640)


def make_video(directory: Path, arch: str, num_frames: int, seed: int = 0) -> Path:
    """An mp4 with exactly `num_frames` frames at 1 fps (so every frame is sampled; timestamps like the Hub's fps=1)."""
    from peft_hyper.testing.videos import make_test_frames, write_video

    height, width = video_geometry(arch)
    path = Path(directory) / f"{arch}_{num_frames}f_{height}p_s{seed}.mp4"
    if not path.exists():
        write_video(make_test_frames(num_frames, height, width, seed=seed), path, fps=1)
    return path


def query_inputs(
    processor: Any, video: Any | None, device: str, dtype: torch.dtype, question: str = QUESTION
) -> dict[str, torch.Tensor]:
    """Processor inputs of one user question, with the video in context (a `peft_hyper.Video`) or text only: the
    prompts `HyperLoraModel.video_inputs` / `text_inputs` build (`peft_hyper.inputs`), on `device` in `dtype`."""
    from peft_hyper.inputs import build_text_inputs, build_video_inputs, to_model_inputs

    if video is None:
        batch = build_text_inputs(processor, question)
    else:
        batch = build_video_inputs(processor, [video], question, add_generation_prompt=True)
    return to_model_inputs(batch, device, dtype)


def visual_tokens(inputs: dict[str, torch.Tensor], config: Any) -> int:
    return int((inputs["input_ids"] == config.image_token_id).sum())


# ---------------------------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """Run `fn` once: (wall seconds, process CPU seconds, result)."""
    sync(device)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    sync(device)
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(values: list[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    return {
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "n": len(values),
        "values": values,
    }


# ---------------------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory while the context is open, above the level at entry.

    CPU: a thread samples the process RSS (/proc/self/statm) every `interval` s (short peaks can be missed; the
    interval is small next to the forwards measured here). CUDA: `torch.cuda.max_memory_allocated` after a reset.
    """

    def __init__(self, device: str, interval: float = 0.002) -> None:
        self.device = str(device)
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
        else:
            self.start_bytes = self.peak_bytes = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, rss_bytes())

    @property
    def delta_mib(self) -> float:
        return (self.peak_bytes - self.start_bytes) / 2**20

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


# ---------------------------------------------------------------------------------------------------- stage timers
class StageClock:
    """Accumulates wall time of named stages measured by forward pre/post hooks or wrappers."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._open: dict[str, float] = {}

    def start(self, name: str) -> None:
        sync(self.device)
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        sync(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._open.pop(name)

    def reset(self) -> None:
        self.totals.clear()
        self._open.clear()

    @contextlib.contextmanager
    def hook_module(self, module: torch.nn.Module, name: str) -> Iterator[None]:
        handles = [
            module.register_forward_pre_hook(lambda *_: self.start(name)),
            module.register_forward_hook(lambda *_: self.stop(name)),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def wrap_method(self, obj: Any, method: str, name: str) -> Iterator[None]:
        original = getattr(obj, method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.start(name)
            try:
                return original(*args, **kwargs)
            finally:
                self.stop(name)

        setattr(obj, method, wrapper)
        try:
            yield
        finally:
            if method in vars(obj):
                delattr(obj, method)
            else:
                setattr(obj, method, original)


# ---------------------------------------------------------------------------------------------------- printing
def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], title: str = "") -> str:
    """Print rows as a Markdown table; columns are (key, header). Floats get 3 significant decimals."""

    def fmt(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            if abs(value) >= 100:
                return f"{value:.0f}"
            if abs(value) >= 10:
                return f"{value:.1f}"
            if abs(value) >= 1:
                return f"{value:.2f}"
            return f"{value:.3f}"
        return str(value)

    lines = []
    if title:
        lines.append(f"\n### {title}\n")
    lines.append("| " + " | ".join(header for _, header in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(key)) for key, _ in columns) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text
