"""Plot query TTFT vs frames (video in context, adapter unmerged / merged, text only) from ttft.py's JSON.

python benchmarks/plot_ttft.py --input benchmarks/results/ttft.json --output benchmarks/results/ttft_vs_frames.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def plot(inputs: list[Path], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    machine = {}
    for path in inputs:
        data = json.loads(Path(path).read_text())
        points += data["points"]
        machine = data.get("machine", machine)
    archs = sorted({p["arch"] for p in points}, key=lambda a: [p["arch"] for p in points].index(a))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {
        "video_median_s": ("-o", "video in context"),
        "adapter_s": ("--s", "adapter (unmerged)"),
        "merged_s": (":^", "adapter (merged)"),
        "text_s": ("-.x", "text only (bare)"),
    }
    for i, arch in enumerate(archs):
        rows = sorted((p for p in points if p["arch"] == arch), key=lambda p: p["frames"])
        for key, (style, label) in styles.items():
            xs = [p["frames"] for p in rows if p.get(key) is not None]
            ys = [p[key] for p in rows if p.get(key) is not None]
            if xs:
                ax.plot(xs, ys, style, color=colors[i % len(colors)], label=f"{arch}: {label}")
        for p in rows:
            if p.get("video_median_s") is not None:
                ax.annotate(
                    f"{p['visual_tokens']} vis. tok",
                    (p["frames"], p["video_median_s"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, -10),
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("frames in the video (512px, 64 visual tokens each)")
    ax.set_ylabel("time to first token (s)")
    title = f"Query TTFT, SmolVLM2 architectures (random weights), {machine.get('device', '?')}"
    if machine.get("cpu_model"):
        title += f"\n{machine['cpu_model']}, {machine.get('nproc')} cores, torch {machine.get('torch')}"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    print(f"wrote {output}")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", type=Path, default=[RESULTS / "ttft.json"])
    parser.add_argument("--output", type=Path, default=RESULTS / "ttft_vs_frames.png")
    args = parser.parse_args()
    plot(args.input, args.output)


if __name__ == "__main__":
    main()
