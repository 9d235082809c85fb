"""The Frames2LoRA demo app (Gradio): a video in, a LoRA adapter out, questions answered with zero visual tokens.

    frames2lora app [--model CKPT] [--host H] [--port N] [--max-upload-mb N]     # or spaces/frames2lora/app.py

One page: pick a shipped sample clip or upload a video and see the frames the hypernetwork reads; *Internalize*
turns it into a LoRA adapter (time, size, rank); every question is answered from the adapter alone and, with
*Compare*, also with the video in context and with no video, each with its visual tokens and time to first token;
a chart shows TTFT against the frame count; *Download adapter* gives the adapter as a PEFT LoRA directory (zipped).

Built on the public API of the model only (`internalize`, `answer`, `load_videos`, `save_adapter`, `delete_adapter`,
`generated_adapters`), so that it is also an example of serving many users from one model:

- each browser session (Gradio's `session_hash`) gets its own adapters, named `s<random>_<n>`, and every answer
  names its adapter (`answer(..., adapter_names=...)`); the model's global `set_adapter` is never called, so users
  cannot see or use each other's adapters;
- a session's adapters and files are deleted when its tab closes (`Blocks.unload`), or, for API clients that never
  say goodbye, after `session_ttl_s` without a request;
- calls on the model are serialised by its lock; a user error (not a video, a corrupt file, a file over the upload
  limit) is shown in the page as the typed error's message, and the app carries on.

Gradio is an optional dependency (`pip install 'peft-hyper[app]'`); this module imports it only when the page is
built.
"""

# No `from __future__ import annotations` here: Gradio finds the `gr.Request` parameter of an event handler by its
# evaluated annotation, and the handlers are defined inside `Frames2LoraApp.blocks`, where `gr` is a local name.

import html
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli import load_model, sample_clips, timed_answer
from .errors import PeftHyperError, UsageError
from .video import Video

INSTALL_HINT = "the app needs Gradio: pip install 'peft-hyper[app]' (or: pip install gradio)"
CHART_FRAMES = (4, 8, 12)
DEFAULT_QUESTION = "how many objects appear in the video?"
CONDITIONS = {"adapter": "**adapter only**", "in_context": "video in context", "no_video": "no video"}


def require_gradio() -> Any:
    """The `gradio` module, or a [`UsageError`] that says how to install it."""
    try:
        import gradio
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return gradio


@dataclass
class Clip:
    """A video as the page shows it: its name, where it is read from, the sampled frames and (for the shipped
    samples) the ground truth."""

    name: str
    source: Path
    video: Video
    truth: dict[str, Any] | None = None

    @property
    def questions(self) -> list[str]:
        return [qa["question"] for qa in self.truth["questions"]] if self.truth else []

    def truth_for(self, question: str) -> str | None:
        for qa in self.truth["questions"] if self.truth else []:
            if qa["question"] == question.strip():
                return qa["answer"]
        return None


@dataclass
class SessionAdapter:
    """A clip internalized in one session: shown as `label`, resident in the model as `adapter_name`."""

    label: str
    adapter_name: str
    clip: Clip
    seconds: float
    size_mib: float
    rank: int


@dataclass
class Session:
    """One user's state: the clip on screen, the adapters made from clips, the active one and the chat."""

    prefix: str  # adapter names of this session start with it
    workdir: Path
    clip: Clip | None = None
    adapters: dict[str, SessionAdapter] = field(default_factory=dict)
    active: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    count: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one internalization at a time per session


class Frames2LoraApp:
    """The app's logic, one instance per model; [`blocks`] wraps it in a Gradio page.

    Args:
        model: a Frames2LoRA `PeftModel` (as `frames2lora` loads it: `cli.load_model`).
        max_upload_mb: uploads larger than this are refused with a [`UsageError`] before they are decoded
            (Gradio itself refuses uploads over four times this, before they reach the disk).
        max_adapters_per_session: internalizing more is refused until the session ends; bounds a session's memory.
        session_ttl_s: a session without a request for this long is ended (its adapters deleted) at the next
            session's first request; browser sessions also end when their tab closes.
    """

    def __init__(
        self,
        model: Any,
        *,
        max_upload_mb: float = 50,
        max_adapters_per_session: int = 8,
        session_ttl_s: float = 3600,
    ) -> None:
        if not max_upload_mb > 0:
            raise UsageError(f"max_upload_mb must be > 0, got {max_upload_mb!r}.")
        self.model = model
        self.tuner = model.base_model  # the HyperLoraModel: internalize, answer, load_videos, save_adapter, ...
        self.max_upload_mb = max_upload_mb
        self.max_adapters_per_session = max_adapters_per_session
        self.session_ttl_s = session_ttl_s
        self.samples = sample_clips()
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._blocks: Any = None

    @classmethod
    def from_checkpoint(cls, model_id: str | None = None, **kwargs: Any) -> "Frames2LoraApp":
        """The app on a checkpoint directory or Hub id (default: the embedded default, or `$FRAMES2LORA_MODEL`)."""
        return cls(load_model(model_id), **kwargs)

    # ------------------------------------------------------------------ sessions
    def session(self, key: str) -> Session:
        """The session `key` (Gradio's `session_hash`), created on first use; ends sessions idle too long."""
        now = time.monotonic()
        with self._sessions_lock:
            expired = [k for k, s in self._sessions.items() if k != key and now - s.last_used > self.session_ttl_s]
            session = self._sessions.get(key)
            if session is None:
                workdir = Path(tempfile.mkdtemp(prefix="frames2lora-app-"))
                session = self._sessions[key] = Session(prefix=f"s{secrets.token_hex(6)}_", workdir=workdir)
            session.last_used = now
        for k in expired:
            self.end_session(k)
        return session

    def end_session(self, key: str) -> None:
        """Delete the session's adapters from the model and its files from the disk (no-op for an unknown key)."""
        with self._sessions_lock:
            session = self._sessions.pop(key, None)
        if session is None:
            return
        for adapter in session.adapters.values():
            if adapter.adapter_name in self.tuner.generated_adapters:
                self.tuner.delete_adapter(adapter.adapter_name)
        shutil.rmtree(session.workdir, ignore_errors=True)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ clips
    def load_sample(self, key: str, name: str) -> Clip:
        """Make the shipped sample `name` the session's clip."""
        if name not in self.samples:
            raise UsageError(f"no sample clip named {name!r}; the samples are {', '.join(self.samples)}.")
        path, truth = self.samples[name]
        return self._set_clip(key, name, path, truth)

    def load_upload(self, key: str, path: str | os.PathLike) -> Clip:
        """Make an uploaded file the session's clip: refused over the size limit, decoded as the hypernetwork reads
        videos (a [`VideoDecodeError`] for what is not a video, or is corrupt)."""
        path = Path(path)
        size_mib = path.stat().st_size / 2**20
        if size_mib > self.max_upload_mb:
            raise UsageError(
                f"'{path.name}' is {size_mib:.1f} MiB; this app takes videos up to {self.max_upload_mb:g} MiB "
                "(frames2lora app --max-upload-mb N). Upload a shorter or smaller video."
            )
        return self._set_clip(key, path.name, path, None)

    def _set_clip(self, key: str, name: str, path: Path, truth: dict[str, Any] | None) -> Clip:
        session = self.session(key)
        try:  # decode errors surface here, before anything changes
            (videos, _) = self.tuner.load_videos(str(path))
        except PeftHyperError as exc:  # say the file's name, not where the server keeps it
            raise type(exc)(str(exc).replace(str(path), path.name)) from exc
        if truth is None:  # keep the upload for the session's lifetime (Gradio may clean its own cache)
            kept = session.workdir / "uploads" / secrets.token_hex(4) / path.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, kept)
            path = kept
        session.clip = Clip(name=name, source=path, video=videos[0], truth=truth)
        return session.clip

    # ------------------------------------------------------------------ adapters
    def internalize(self, key: str) -> SessionAdapter:
        """Turn the session's clip into an adapter of this session and make it the session's active adapter."""
        session = self.session(key)
        with session.lock:
            clip = session.clip
            if clip is None:
                raise UsageError("pick a sample clip or upload a video first.")
            if len(session.adapters) >= self.max_adapters_per_session:
                raise UsageError(
                    f"this session holds {len(session.adapters)} adapters, the most this app keeps per user; reload "
                    "the page to start again."
                )
            number = session.count + 1
            name = f"{session.prefix}{number}"
            start = time.perf_counter()
            state_dict = self.tuner.internalize(clip.video, adapter_name=name, activate=False)
            seconds = time.perf_counter() - start
            session.count = number
            adapter = SessionAdapter(
                label=f"{number}: {clip.name}",
                adapter_name=name,
                clip=clip,
                seconds=seconds,
                size_mib=sum(t.numel() * t.element_size() for t in state_dict.values()) / 2**20,
                rank=self.tuner.hyper_config.total_rank,
            )
            session.adapters[adapter.label] = adapter
            session.active = adapter.label
        return adapter

    def select(self, key: str, label: str) -> SessionAdapter:
        """Make the session's adapter `label` its active one (the model's global active adapter is not touched)."""
        session = self.session(key)
        if label not in session.adapters:
            raise UsageError(f"no adapter {label!r} in this session; internalize a video first.")
        session.active = label
        session.clip = session.adapters[label].clip
        return session.adapters[label]

    def active_adapter(self, key: str) -> SessionAdapter:
        session = self.session(key)
        if session.active is None:
            raise UsageError("internalize a video first: the questions are answered from its adapter.")
        return session.adapters[session.active]

    def ask(self, key: str, question: str, compare: bool = False, max_new_tokens: int = 16) -> dict[str, Any]:
        """Answer `question` from the session's active adapter (and, with `compare`, with its video in context and
        with no video): `{"question", "adapter": {"answer", "ttft_s", "visual_tokens"}, ...}`, as `frames2lora ask`."""
        question = (question or "").strip()
        if not question:
            raise UsageError("type a question first.")
        adapter = self.active_adapter(key)
        row: dict[str, Any] = {"question": question, "adapter_label": adapter.label}
        row["adapter"] = timed_answer(self.tuner, question, max_new_tokens, adapter_names=adapter.adapter_name)
        if compare:
            row["in_context"] = timed_answer(self.tuner, question, max_new_tokens, videos=[adapter.clip.video])
            row["no_video"] = timed_answer(self.tuner, question, max_new_tokens, adapter_names="__base__")
        truth = adapter.clip.truth_for(question)
        if truth is not None:
            row["truth"] = truth
        session = self.session(key)
        session.history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer_markdown(row)},
        ]
        return row

    def adapter_zip(self, key: str) -> Path:
        """The session's active adapter as a zipped PEFT LoRA directory (written by `save_adapter`)."""
        session = self.session(key)
        adapter = self.active_adapter(key)
        stem = f"{Path(adapter.clip.name).stem}-{adapter.label.split(':')[0]}-lora"
        folder = session.workdir / "downloads" / stem
        self.tuner.save_adapter(adapter.adapter_name, folder)
        return Path(shutil.make_archive(str(folder), "zip", root_dir=folder.parent, base_dir=stem))

    def ttft_by_frames(
        self, key: str, question: str | None = None, frames: Sequence[int] = CHART_FRAMES, repeats: int = 3
    ) -> list[dict[str, Any]]:
        """TTFT of one question, adapter only vs the video in context, for the session's clip sampled at each of
        `frames` (the adapter internalized from the same frames), the best of `repeats` timings (the model is shared
        with other users and the machine with other jobs): one dict per frame count."""
        session = self.session(key)
        clip = session.adapters[session.active].clip if session.active else session.clip
        if clip is None:
            raise UsageError("pick a sample clip or upload a video first.")
        question = (question or "").strip() or DEFAULT_QUESTION
        name = f"{session.prefix}chart"
        points = []
        try:
            for count in frames:
                (videos, _) = self.tuner.load_videos(str(clip.source), num_frames=count)
                self.tuner.internalize(videos[0], adapter_name=name, activate=False)
                adapter = [timed_answer(self.tuner, question, 1, adapter_names=name) for _ in range(repeats)]
                in_context = [timed_answer(self.tuner, question, 1, videos=[videos[0]]) for _ in range(repeats)]
                points.append(
                    {
                        "frames": videos[0].num_frames,
                        "adapter_ttft_s": min(cell["ttft_s"] for cell in adapter),
                        "in_context_ttft_s": min(cell["ttft_s"] for cell in in_context),
                        "visual_tokens": in_context[0]["visual_tokens"],
                    }
                )
        finally:
            if name in self.tuner.generated_adapters:
                self.tuner.delete_adapter(name)
        return points

    # ------------------------------------------------------------------ the page
    def blocks(self) -> Any:
        """The Gradio page (built once)."""
        if self._blocks is None:
            self._blocks = self._build_blocks()
        return self._blocks

    def launch(self, host: str | None = None, port: int | None = None, **kwargs: Any) -> Any:
        """Serve the page (host and port default to Gradio's: `$GRADIO_SERVER_NAME` / `$GRADIO_SERVER_PORT`, else
        127.0.0.1:7860); `kwargs` go to `Blocks.launch`."""
        gr = require_gradio()
        options = {
            "server_name": host,
            "server_port": port,
            "max_file_size": int(4 * self.max_upload_mb * 2**20),  # bytes
            # system fonts: the page works offline (Gradio's default theme loads its fonts from the web)
            "theme": gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["monospace"]),
            "css": CSS,
        }
        options.update(kwargs)
        return self.blocks().queue(default_concurrency_limit=4).launch(**options)

    def _build_blocks(self) -> Any:
        gr = require_gradio()

        def shown(fn):
            """Run `fn`, showing a user error in the page (as a `gr.Error`: the typed error's class and message)."""

            def run(*args):
                try:
                    return fn(*args)
                except PeftHyperError as exc:  # Gradio renders the message as HTML
                    message = html.escape(f"{type(exc).__name__}: {exc}", quote=False)
                    raise gr.Error(message, title="Cannot do that", print_exception=False) from exc

            return run

        def clip_outputs(clip: Clip) -> tuple:
            question = clip.questions[0] if clip.questions else gr.update()
            return frame_strip(clip.video), clip_markdown(clip), gr.update(choices=clip.questions, value=question)

        def on_sample(name: str, request: gr.Request):
            if not name:
                return gr.update(), gr.update(), gr.update()
            return clip_outputs(shown(self.load_sample)(request.session_hash, name))

        def on_upload(path: str | None, request: gr.Request):
            if not path:
                return gr.update(), gr.update(), gr.update()
            return clip_outputs(shown(self.load_upload)(request.session_hash, path))

        def on_internalize(request: gr.Request, progress=gr.Progress()):  # noqa: B008  (how Gradio asks for it)
            progress(0.1, desc="internalizing: one pass of the VLM + hypernetwork")
            adapter = shown(self.internalize)(request.session_hash)
            labels = list(self.session(request.session_hash).adapters)
            return adapter_markdown(adapter), gr.update(choices=labels, value=adapter.label)

        def on_select(label: str | None, request: gr.Request):
            if not label:
                return gr.update(), gr.update(), gr.update(), gr.update()
            adapter = shown(self.select)(request.session_hash, label)
            return (*clip_outputs(adapter.clip), adapter_markdown(adapter))

        def on_ask(question: str, compare: bool, request: gr.Request):
            row = shown(self.ask)(request.session_hash, question, bool(compare))
            return self.session(request.session_hash).history, row

        def on_download(request: gr.Request):
            return gr.update(value=str(shown(self.adapter_zip)(request.session_hash)), visible=True)

        def on_chart(question: str, request: gr.Request):
            points = shown(self.ttft_by_frames)(request.session_hash, question)
            session = self.session(request.session_hash)
            clip = session.adapters[session.active].clip if session.active else session.clip
            return ttft_figure(points, clip.name, (question or "").strip() or DEFAULT_QUESTION), points

        def on_unload(request: gr.Request):
            self.end_session(request.session_hash)

        samples = list(self.samples)
        with gr.Blocks(title="Frames2LoRA: video → LoRA") as demo:
            gr.Markdown(INTRO)
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    sample = gr.Dropdown(samples, value=None, label="Sample clip (held-out synthetic world)")
                    upload = gr.File(label=f"…or upload a video (≤ {self.max_upload_mb:g} MiB)", height=120)
                with gr.Column(scale=3):
                    strip = gr.Image(
                        show_label=False,
                        type="pil",
                        format="png",
                        interactive=False,
                        buttons=[],
                        elem_id="strip",
                    )
                    clip_info = gr.Markdown("Pick a sample clip or upload a video.")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    internalize = gr.Button("Internalize", variant="primary")
                    adapter_info = gr.Markdown("No adapter yet.")
                    active = gr.Dropdown([], value=None, label="Active adapter (this session's)")
                    download = gr.Button("Download adapter (PEFT LoRA, zip)")
                    download_file = gr.File(label="Adapter", interactive=False, visible=False)
                with gr.Column(scale=3):
                    chat = gr.Chatbot(label="Answers", height=560, feedback_options=None, buttons=[], elem_id="chat")
                    with gr.Row():
                        question = gr.Dropdown(
                            [], value=None, label="Question", allow_custom_value=True, scale=4, elem_id="question"
                        )
                        compare = gr.Checkbox(True, label="Also with the video in context / no video", scale=1)
                    ask = gr.Button("Ask", variant="primary")
                    details = gr.JSON(visible=False)
            with gr.Accordion("Time to first token vs frames (measured on this machine, on request)", open=True):
                with gr.Row():
                    chart_button = gr.Button(
                        f"Measure at {' / '.join(map(str, CHART_FRAMES))} frames", scale=0, min_width=220
                    )
                    chart = gr.Plot(show_label=False, elem_id="chart")
                chart_points = gr.JSON(visible=False)

            sample.change(on_sample, [sample], [strip, clip_info, question], api_name="load_sample")
            upload.upload(on_upload, [upload], [strip, clip_info, question], api_name="load_upload")
            internalize.click(on_internalize, None, [adapter_info, active], api_name="internalize")
            active.input(on_select, [active], [strip, clip_info, question, adapter_info], api_name="select_adapter")
            ask.click(on_ask, [question, compare], [chat, details], api_name="ask")
            download.click(on_download, None, [download_file], api_name="download")
            chart_button.click(on_chart, [question], [chart, chart_points], api_name="ttft_chart")
            demo.unload(on_unload)
        return demo


INTRO = """\
# Frames2LoRA: a video in, a LoRA adapter out
A hypernetwork reads the video **once** and writes a LoRA adapter for the frozen VLM; every question is then answered
text-only from the adapter, with **zero visual tokens** in context. Compare it with the same model reading the video.
"""

CSS = """
#strip img { image-rendering: pixelated; }
"""


def frame_strip(video: Video, height: int = 96, gap: int = 4) -> Any:
    """The sampled frames side by side in one image, each `height` px high (small frames enlarged, nearest) and
    labelled with its time in the video."""
    from PIL import Image, ImageDraw, ImageFont

    frames = [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in video.frames]
    frames = [f.resize((max(1, round(f.width * height / f.height)), height), Image.NEAREST) for f in frames]
    label, font = 18, ImageFont.load_default(size=13)
    strip = Image.new("RGB", (sum(f.width for f in frames) + gap * (len(frames) - 1), height + label), "white")
    draw = ImageDraw.Draw(strip)
    times = video.metadata.timestamps if video.metadata is not None else [None] * len(frames)
    x = 0
    for frame, seconds in zip(frames, times, strict=True):
        strip.paste(frame, (x, 0))
        if seconds is not None:
            draw.text((x + frame.width // 2, height + 1), f"{seconds:.1f}s", fill="#444444", anchor="ma", font=font)
        x += frame.width + gap
    return strip


def clip_markdown(clip: Clip) -> str:
    height, width = clip.video.frames.shape[-2:]
    text = f"**{clip.name}**: the {clip.video.num_frames} frames the hypernetwork reads ({width}×{height} px)"
    if clip.truth:
        text += f" · ground truth: *{clip.truth['caption']}*"
    return text


def adapter_markdown(adapter: SessionAdapter) -> str:
    return (
        f"**{adapter.label}** internalized in **{adapter.seconds:.2f} s**: a LoRA of rank {adapter.rank}, "
        f"{adapter.size_mib:.2f} MiB, 0 visual tokens per question."
    )


def answer_markdown(row: dict[str, Any]) -> str:
    """One question's answers as a small table: condition, visual tokens, TTFT, answer (and the truth if known)."""
    lines = [f"| {row['adapter_label']} | visual tokens | TTFT | answer |", "|---|---:|---:|---|"]
    for condition, title in CONDITIONS.items():
        if condition in row:
            cell = row[condition]
            ok = "" if "truth" not in row else (" ✓" if cell["answer"] == row["truth"] else " ✗")
            lines.append(
                f"| {title} | {cell['visual_tokens']} | {cell['ttft_s'] * 1000:.0f} ms | {cell['answer']}{ok} |"
            )
    if "truth" in row:
        lines.append(f"| *ground truth* | | | *{row['truth']}* |")
    return "\n".join(lines)


def ttft_figure(points: list[dict[str, Any]], clip_name: str, question: str) -> Any:
    """A matplotlib figure: TTFT (ms) against frames, adapter only vs the video in context (visual tokens marked)."""
    from matplotlib.figure import Figure

    frames = [p["frames"] for p in points]
    figure = Figure(figsize=(6.4, 2.8), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(frames, [p["in_context_ttft_s"] * 1000 for p in points], "o-", color="#d9534f", label="video in context")
    axes.plot(frames, [p["adapter_ttft_s"] * 1000 for p in points], "o-", color="#2b7bba", label="adapter only (0)")
    for point in points:
        axes.annotate(
            f"{point['visual_tokens']} tok",
            (point["frames"], point["in_context_ttft_s"] * 1000),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    axes.set_xticks(frames)
    axes.set_xlabel("frames sampled")
    axes.set_ylabel("TTFT (ms)")
    axes.set_ylim(bottom=0)
    axes.margins(y=0.2)
    axes.set_title(f"{clip_name}: “{question}”", fontsize=9)
    axes.legend(fontsize=8, loc="upper left")
    return figure


def serve(
    model_id: str | None = None,
    host: str | None = None,
    port: int | None = None,
    max_upload_mb: float = 50,
    **launch_kwargs: Any,
) -> Any:
    """Load the checkpoint and serve the app (`frames2lora app`); blocks until the server stops."""
    require_gradio()
    app = Frames2LoraApp.from_checkpoint(model_id, max_upload_mb=max_upload_mb)
    return app.launch(host=host, port=port, **launch_kwargs)
