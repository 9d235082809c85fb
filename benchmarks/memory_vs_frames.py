"""Peak memory of internalization as the number of frames grows, one fresh subprocess per point (clean peaks).

Modes (each includes decode + processor):
  stream         `model.generate_adapter(video)`: peft-hyper's whole-video path — frames sampled first, then decoded,
                 processed and encoded by the vision tower `frames_per_vision_chunk` at a time; the decoder's
                 per-layer input states are handed to the hypernetwork layer by layer (forward pre-hooks) and
                 dropped; the forward stops after the last needed layer (no lm head).
  segmented      `model.generate_adapter(video, segment_frames=S)`: segments of S frames, `--segment-batch-size` per
                 forward, each decoded and processed when the vision tower reads it; adapters composed.
  eager          the whole-video path as it was before chunked decoding and processing: `load_videos` decodes every
                 sampled frame, `hypernetwork_inputs` processes them all at once (vision tower still chunked), then
                 `generate_lora_factors`. Kept as the A/B baseline.
  hidden_states  the non-streaming capture: `vlm.model(**inputs, output_hidden_states=True)` then
                 `torch.stack(hidden_states[:L], dim=1)` → `[B, L, S, d]` (what the reference implementation feeds
                 its hypernetwork), hypernetwork not run.
  forward        one plain `vlm(**inputs)` (lm head over every position).
Peak = max RSS sampled every 2 ms (CPU) / `max_memory_allocated` (CUDA), minus the level after the model was built.
The peak is attributed to the phase it happened in (pre = decode+processor, vision = vision tower + connector,
text = text decoder + hypernetwork + lm head), which shows what dominates; on the chunked paths the phases alternate
chunk by chunk.

Source video: by default one mp4 per point with exactly `frames` frames at 1 fps (every frame sampled). With
`--video-frames N` one mp4 of N frames at `--video-fps` is written once and every point samples `frames` of them
(`num_frames=frames`): a long video read at several frame counts.

Depth-reduced proxy (--vision-layers / --text-layers): in a no-grad forward only one layer's activations are live at a
time, so the activation peak of the stream path does not depend on depth (weights are excluded by the baseline);
compute does, linearly. This lets the sweep reach 128–1024 frames at 512px on a CPU. The capture path's memory does
grow with depth: the table also gives the analytic full-depth capture size (L_real × S × d × 4 bytes). Examples:

    python benchmarks/memory_vs_frames.py --arch 256M --frames 4 16 64 128 --vision-layers 1 --text-layers 4
    python benchmarks/memory_vs_frames.py --arch 256M --frames 64 256 1024 --modes segmented stream \
        --video-frames 1024 --segment-frames 16 --vision-layers 1 --text-layers 4 --threads 1 --tag long_video
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("stream", "segmented", "eager", "hidden_states", "forward")


class PhasePeaks:
    """RSS sampler that keeps the peak per phase (phase switched by forward hooks)."""

    def __init__(self, device: str, interval: float = 0.002) -> None:
        self.device, self.interval = str(device), interval
        self.phase = "pre"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()

    def _current(self) -> int:
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated()
        return common.rss_bytes()

    def set_phase(self, phase: str) -> None:
        if self.device.startswith("cuda"):  # close the previous phase exactly, then start a new peak window
            torch.cuda.synchronize()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        else:  # sample at every switch too, so that short phases are never missed
            value = common.rss_bytes()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), value)
            self.peaks[phase] = max(self.peaks.get(phase, 0), value)
        self.phase = phase

    def _sample(self) -> None:
        while not self._stop.is_set():
            value = common.rss_bytes()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), value)
            time.sleep(self.interval)

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = common.rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            self.set_phase("done")
            self.peaks.pop("done", None)
        else:
            self._stop.set()
            self._thread.join()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), common.rss_bytes())


def child(args) -> None:
    """One point in this (fresh) process: print it as a JSON line."""
    common.setup(args)
    point = measure_point(args, args.arch[0], args.frames[0], args.child_mode, args.video)
    print("RESULT " + json.dumps(point), flush=True)


def measure_point(args, arch: str, frames: int, mode: str, video: Path | None = None) -> dict:
    """Build the model, run one mode on `video` (or a `frames`-frame video made here) sampled to `frames` frames,
    return the peaks."""
    import peft_hyper
    from peft_hyper.inputs import ChunkedVideoInputs

    built = common.build(
        arch,
        frames,
        args.device,
        args.dtype,
        args.seed,
        vision_layers=args.vision_layers,
        text_layers=args.text_layers,
    )
    vlm, model, tuner = built["vlm"], built["model"], built["tuner"]
    with tempfile.TemporaryDirectory() as work:
        path = video if video is not None else common.make_video(Path(work), arch, frames, args.seed)
        sampled = tuner.open_videos(str(path), num_frames=frames)[0][0].num_frames  # sampling only, no decoding
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        body = vlm.model
        phases = PhasePeaks(args.device)
        forwards: list[tuple[int, int]] = []  # (videos, tokens) of each text-decoder forward

        def text_starts(module, args_, kwargs):
            forwards.append(tuple(kwargs["inputs_embeds"].shape[:2]))

        handles = [
            body.vision_model.register_forward_pre_hook(lambda *_: phases.set_phase("vision")),
            body.connector.register_forward_hook(lambda *_: phases.set_phase("text")),
            body.text_model.register_forward_pre_hook(text_starts, with_kwargs=True),
        ]
        pixel_chunks = ChunkedVideoInputs.pixel_chunks

        def phased_chunks(self, index, frames_per_chunk):  # decode + processor of each chunk is the "pre" phase
            chunks = pixel_chunks(self, index, frames_per_chunk)
            while True:
                phases.set_phase("pre")
                try:
                    chunk = next(chunks)
                except StopIteration:
                    phases.set_phase("text")
                    return
                yield chunk

        ChunkedVideoInputs.pixel_chunks = phased_chunks
        t0 = time.perf_counter()
        try:
            with phases, torch.no_grad():
                if mode == "stream":
                    model.generate_adapter(str(path), num_frames=frames)
                elif mode == "segmented":
                    model.generate_adapter(
                        str(path),
                        num_frames=frames,
                        segment_frames=args.segment_frames,
                        segment_batch_size=args.segment_batch_size,
                    )
                elif mode == "eager":
                    videos, _ = tuner.load_videos(str(path), num_frames=frames)
                    tuner.generate_lora_factors(tuner.hypernetwork_inputs(videos))
                    del videos
                else:
                    inputs = tuner.hypernetwork_inputs([peft_hyper.load_video(path, num_frames=frames)])
                    if mode == "hidden_states":
                        out = body(**inputs, output_hidden_states=True, use_cache=False)
                        layers = len(tuner.hypernetwork.layers)
                        stacked = torch.stack(out.hidden_states[:layers], dim=1)  # [B, L, S, d]
                        del out, stacked
                    else:
                        out = vlm(**inputs, use_cache=False)
                        del out
        finally:
            ChunkedVideoInputs.pixel_chunks = pixel_chunks
            for handle in handles:
                handle.remove()
        wall = time.perf_counter() - t0
    peaks = {k: (v - phases.base) / 2**20 for k, v in phases.peaks.items()}
    config = built["config"]
    return {
        "arch": arch,
        "frames": sampled,
        "mode": mode,
        "tokens": max(tokens for _, tokens in forwards) if forwards else None,  # of the longest text forward
        "text_forwards": forwards,
        "wall_s": wall,
        "s_per_frame": wall / sampled,
        "peak_mib": max(peaks.values()),
        "phase_peak_mib": peaks,
        "vision_layers": config.vision_config.num_hidden_layers,
        "text_layers": config.text_config.num_hidden_layers,
        "segment_frames": args.segment_frames if mode == "segmented" else None,
        "maxrss_mib": __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024,
        "subprocess": bool(args.child_mode),
    }


def analytic(arch: str, frames: int, tokens: int | None) -> dict[str, float]:
    """Sizes (MiB, fp32) of the big tensors of one forward at the real architecture."""
    from peft_hyper.testing.models import SMOLVLM2_ARCHITECTURES

    if arch == "tiny":
        return {}
    a = SMOLVLM2_ARCHITECTURES[arch]
    patches = (a["image_size"] // a["patch_size"]) ** 2
    mib = 2**20
    out = {
        "pixel_values_mib": frames * 3 * a["image_size"] ** 2 * 4 / mib,
        "pixel_attention_mask_mib": frames * a["image_size"] ** 2 * 8 / mib,  # int64 from the processor
        "vision_mlp_act_mib": frames * patches * a["vision_intermediate"] * 4 / mib,
        "vision_hidden_mib": frames * patches * a["vision_hidden"] * 4 / mib,
    }
    if tokens:
        out["capture_full_depth_mib"] = a["text_layers"] * tokens * a["text_hidden"] * 4 / mib
        out["one_layer_states_mib"] = tokens * a["text_hidden"] * 4 / mib
        out["logits_mib"] = tokens * 49280 * 4 / mib
    return out


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0], ["256M"], [4, 16, 64, 128], 1)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--max-frames", nargs="*", default=["forward=64"], help="per-mode frame caps (compute budget), e.g. forward=64"
    )
    parser.add_argument(
        "--video-frames",
        type=int,
        default=None,
        help="write one mp4 of this many frames (at --video-fps) and sample every point's frames from it",
    )
    parser.add_argument("--video-fps", type=float, default=1.0, help="frame rate of the --video-frames mp4")
    parser.add_argument("--segment-frames", type=int, default=16, help="segmented mode: frames per segment")
    parser.add_argument("--segment-batch-size", type=int, default=8, help="segmented mode: segments per forward")
    parser.add_argument("--vision-layers", type=int, default=None, help="depth-reduced proxy: vision layers")
    parser.add_argument("--text-layers", type=int, default=None, help="depth-reduced proxy: text layers")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process instead of one subprocess per point (peaks less clean; tests)",
    )
    parser.add_argument("--child-mode", default=None, help=argparse_hidden())
    parser.add_argument("--video", type=Path, default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.child_mode:
        child(args)
        return
    caps = {k: int(v) for k, v in (item.split("=") for item in args.max_frames)}
    common.setup(args)
    with tempfile.TemporaryDirectory() as work:
        if args.video_frames:
            args.video = long_video(Path(work), args)
        sweep(args, caps)


def long_video(directory: Path, args) -> Path:
    """One mp4 of `--video-frames` frames at `--video-fps` (360p for real architectures) that every point samples."""
    from peft_hyper.testing.videos import make_test_frames, write_video

    height, width = common.video_geometry(args.arch[0])
    frames = make_test_frames(args.video_frames, height, width, seed=args.seed)
    path = write_video(frames, directory / f"long_{args.video_frames}f_{height}p.mp4", fps=args.video_fps)
    print(f"wrote {path} ({args.video_frames} frames, {width}x{height}, {args.video_fps} fps)", flush=True)
    return path


def sweep(args, caps: dict[str, int]) -> None:
    result = {
        "benchmark": "memory_vs_frames",
        "args": vars(args),
        "machine": common.machine_info(args.device),
        "points": [],
    }
    for arch in args.arch:
        for frames in args.frames:
            for mode in args.modes:
                if mode in caps and frames > caps[mode]:
                    continue
                if args.in_process:
                    point = measure_point(args, arch, frames, mode, args.video)
                    result["points"].append(point)
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    "--arch",
                    arch,
                    "--frames",
                    str(frames),
                    "--device",
                    args.device,
                    "--dtype",
                    args.dtype,
                    "--seed",
                    str(args.seed),
                    "--child-mode",
                    mode,
                ]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                if args.vision_layers is not None:
                    cmd += ["--vision-layers", str(args.vision_layers)]
                if args.video is not None:
                    cmd += ["--video", str(args.video)]
                cmd += ["--segment-frames", str(args.segment_frames)]
                cmd += ["--segment-batch-size", str(args.segment_batch_size)]
                if args.text_layers is not None:
                    cmd += ["--text-layers", str(args.text_layers)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    raise RuntimeError(f"child failed: {' '.join(cmd)}")
                point = json.loads(lines[-1][len("RESULT ") :])
                result["points"].append(point)
                print(
                    f"[{arch} {frames}f {mode}] peak +{point['peak_mib']:.0f} MiB "
                    f"({', '.join(f'{k} {v:.0f}' for k, v in point['phase_peak_mib'].items())}), "
                    f"{point['wall_s']:.1f} s, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    # One row per (arch, frames): modes side by side, plus the analytic sizes.
    rows = {}
    for p in result["points"]:
        row = rows.setdefault((p["arch"], p["frames"]), {"arch": p["arch"], "frames": p["frames"]})
        row[f"{p['mode']}_mib"] = p["peak_mib"]
        row[f"{p['mode']}_dominant"] = max(p["phase_peak_mib"], key=p["phase_peak_mib"].get)
        row[f"{p['mode']}_s_per_frame"] = p["s_per_frame"]
        if p["tokens"] and p["mode"] != "segmented":
            row["tokens"] = p["tokens"]
        if p["mode"] == "segmented":
            row["segment_tokens"] = p["tokens"]
    for row in rows.values():
        row.update(analytic(row["arch"], row["frames"], row.get("tokens")))
    result["rows"] = list(rows.values())
    result["table"] = common.print_table(
        result["rows"],
        [
            ("arch", "arch"),
            ("frames", "frames"),
            ("tokens", "tokens"),
            ("segment_tokens", "tokens per segment forward"),
            ("segmented_mib", "segmented peak Δ (MiB)"),
            ("segmented_dominant", "segmented peak phase"),
            ("segmented_s_per_frame", "segmented s/frame"),
            ("stream_mib", "stream peak Δ (MiB)"),
            ("stream_dominant", "stream peak phase"),
            ("stream_s_per_frame", "stream s/frame"),
            ("eager_mib", "eager (before) peak Δ (MiB)"),
            ("eager_dominant", "eager peak phase"),
            ("eager_s_per_frame", "eager s/frame"),
            ("hidden_states_mib", "capture peak Δ (MiB)"),
            ("hidden_states_dominant", "capture peak phase"),
            ("forward_mib", "plain forward peak Δ (MiB)"),
            ("pixel_values_mib", "pixel_values (MiB)"),
            ("vision_mlp_act_mib", "vision MLP act. (MiB)"),
            ("capture_full_depth_mib", "full-depth capture (MiB, analytic)"),
            ("logits_mib", "logits (MiB, analytic)"),
        ],
        title=f"Peak memory vs frames ({args.device}, {args.dtype}; vision layers "
        f"{args.vision_layers or 'real'}, text layers {args.text_layers or 'real'})",
    )
    common.finish(result, common.output_path(args, "memory_vs_frames"))


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
