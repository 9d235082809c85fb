"""`frames2lora app`: the Gradio page on the embedded default, served on a free local port and driven over HTTP with
`gradio_client` as a browser would (and, in the slow test, by headless Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

gradio = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from peft_hyper import cli  # noqa: E402
from peft_hyper.app import CHART_FRAMES, Frames2LoraApp  # noqa: E402
from peft_hyper.errors import UsageError  # noqa: E402

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SAMPLE, TRUTH = cli.sample_clip()
QUESTIONS = [qa["question"] for qa in TRUTH["questions"][:3]]
MAX_UPLOAD_MB = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model():
    return cli.load_model(None)  # the embedded default


@pytest.fixture(scope="module")
def served(model):
    """The app on a free port of 127.0.0.1, in this process (the server runs in threads): (app, url)."""
    app = Frames2LoraApp(model, max_upload_mb=MAX_UPLOAD_MB)
    port = free_port()
    app.launch(host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    app.blocks().close()


def client(url: str) -> Client:
    """A new browser-like session (its own `session_hash`)."""
    return Client(url, verbose=False, download_files=False)


def test_app_answers_like_frames2lora_ask(served, model):
    app, url = served
    _, rows = cli.ask(model, SAMPLE, QUESTIONS)  # what `frames2lora ask SAMPLE Q1 Q2 Q3` answers
    expected = [row["adapter"]["answer"] for row in rows]

    user = client(url)
    strip, clip_info, _ = user.predict("synthetic_clip", api_name="/load_sample")
    assert strip["path"].endswith(".png") and f"the {TRUTH['num_frames']} frames the hypernetwork" in clip_info
    assert TRUTH["caption"] in clip_info
    status, selector = user.predict(api_name="/internalize")
    assert "1: synthetic_clip" in status and "rank 16" in status and "MiB" in status
    assert selector["value"] == "1: synthetic_clip"

    answers = [user.predict(question, False, api_name="/ask")[1] for question in QUESTIONS]
    assert [row["adapter"]["answer"] for row in answers] == expected
    assert all(row["adapter"]["visual_tokens"] == 0 and "in_context" not in row for row in answers)

    history, row = user.predict(QUESTIONS[0], True, api_name="/ask")
    assert row["adapter"]["answer"] == expected[0] and row["truth"] == TRUTH["questions"][0]["answer"]
    assert row["in_context"]["visual_tokens"] == TRUTH["num_frames"] * 16 and row["no_video"]["visual_tokens"] == 0
    assert all(row[c]["ttft_s"] > 0 for c in ("adapter", "in_context", "no_video"))
    assert len(history) == 2 * (len(QUESTIONS) + 1) and "video in context" in json.dumps(history[-1])


def test_the_selector_switches_among_a_sessions_adapters(served, model):
    app, url = served
    user = client(url)
    question = "how many objects appear in the video?"
    user.predict("synthetic_clip", api_name="/load_sample")
    user.predict(api_name="/internalize")
    first = user.predict(question, False, api_name="/ask")[1]
    user.predict("synthetic_clip_2", api_name="/load_sample")
    _, selector = user.predict(api_name="/internalize")
    assert [label for label, _ in selector["choices"]] == ["1: synthetic_clip", "2: synthetic_clip_2"]
    second = user.predict(question, False, api_name="/ask")[1]
    assert second["adapter_label"] == "2: synthetic_clip_2"

    global_active = model.base_model.active_adapter
    strip, clip_info, _, adapter_info = user.predict("1: synthetic_clip", api_name="/select_adapter")
    assert "**synthetic_clip**" in clip_info and "1: synthetic_clip" in adapter_info
    again = user.predict(question, False, api_name="/ask")[1]
    assert again["adapter_label"] == "1: synthetic_clip" and again["adapter"]["answer"] == first["adapter"]["answer"]
    assert model.base_model.active_adapter == global_active  # the session's choice, not the model's set_adapter


def test_bad_uploads_show_the_typed_error_and_the_app_keeps_working(served, tmp_path):
    app, url = served
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("hello, I am not a video\n")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(SAMPLE.read_bytes()[: SAMPLE.stat().st_size // 3])
    too_big = tmp_path / "big.mp4"
    too_big.write_bytes(b"\0" * int(1.5 * MAX_UPLOAD_MB * 2**20))

    user = client(url)
    for path, expected in [
        (not_a_video, "VideoDecodeError"),
        (corrupt, "(VideoDecodeError|EmptyVideoError)"),  # which one depends on where the cut falls
        (too_big, f"UsageError: 'big.mp4' is 1.5 MiB; this app takes videos up to {MAX_UPLOAD_MB} MiB"),
    ]:
        with pytest.raises(AppError, match=expected) as caught:
            user.predict(handle_file(str(path)), api_name="/load_upload")
        message = str(caught.value)
        assert path.name in message and str(tmp_path) not in message and "/gradio/" not in message

    with pytest.raises(AppError, match="internalize a video first"):  # nothing was loaded by the failures
        user.predict("what?", False, api_name="/ask")
    good = tmp_path / "my clip.mp4"
    shutil.copyfile(SAMPLE, good)
    strip, clip_info, _ = user.predict(handle_file(str(good)), api_name="/load_upload")
    assert strip["path"].endswith(".png") and f"**my clip.mp4**: the {TRUTH['num_frames']} frames" in clip_info
    status, _ = user.predict(api_name="/internalize")
    assert "1: my clip.mp4" in status
    _, row = user.predict(QUESTIONS[0], False, api_name="/ask")
    assert row["adapter"]["answer"] and "truth" not in row  # an upload has no ground truth


def test_sessions_do_not_see_each_others_adapters(served, model):
    app, url = served
    alice, bob = client(url), client(url)
    alice.predict("synthetic_clip", api_name="/load_sample")
    alice.predict(api_name="/internalize")
    alice_answer = alice.predict(QUESTIONS[1], False, api_name="/ask")[1]["adapter"]["answer"]

    for call in [lambda: bob.predict(QUESTIONS[1], False, api_name="/ask"), lambda: bob.predict(api_name="/download")]:
        with pytest.raises(AppError, match="internalize a video first"):
            call()
    with pytest.raises(AppError, match="1: synthetic_clip"):  # not among bob's choices: Gradio refuses it
        bob.predict("1: synthetic_clip", api_name="/select_adapter")
    with pytest.raises(UsageError, match="no adapter '1: synthetic_clip' in this session"):  # and so would the app
        app.select(bob.session_hash, "1: synthetic_clip")

    bob.predict("synthetic_clip_2", api_name="/load_sample")
    status, selector = bob.predict(api_name="/internalize")
    assert [label for label, _ in selector["choices"]] == ["1: synthetic_clip_2"]  # only bob's own
    alice_session, bob_session = app.session(alice.session_hash), app.session(bob.session_hash)
    alice_name = alice_session.adapters["1: synthetic_clip"].adapter_name
    bob_name = bob_session.adapters["1: synthetic_clip_2"].adapter_name
    assert alice_name != bob_name and {alice_name, bob_name} <= set(model.base_model.generated_adapters)
    assert alice.predict(QUESTIONS[1], False, api_name="/ask")[1]["adapter"]["answer"] == alice_answer

    app.end_session(alice.session_hash)  # what closing the tab does (Blocks.unload)
    assert alice_name not in model.base_model.generated_adapters and not alice_session.workdir.exists()
    assert bob_name in model.base_model.generated_adapters
    bob_session.last_used -= app.session_ttl_s + 1  # idle too long: ended at the next session's first request
    app.session("someone-else")
    assert bob_name not in model.base_model.generated_adapters
    app.end_session("someone-else")


def test_closing_the_tab_deletes_the_sessions_adapters(served, model):
    import httpx

    app, url = served
    user = client(url)
    user.predict("synthetic_clip_4", api_name="/load_sample")
    user.predict(api_name="/internalize")
    name = app.session(user.session_hash).adapters["1: synthetic_clip_4"].adapter_name
    # a browser keeps this stream open while the tab is open; its end is what runs `Blocks.unload`
    with httpx.stream("GET", f"{url}gradio_api/heartbeat/{user.session_hash}", timeout=10) as stream:
        next(stream.iter_lines())
    deadline = time.monotonic() + 10
    while name in model.base_model.generated_adapters and time.monotonic() < deadline:
        time.sleep(0.05)
    assert name not in model.base_model.generated_adapters


def test_download_gives_the_peft_lora_directory_as_a_zip(served, tmp_path):
    app, url = served
    user = Client(url, verbose=False, download_files=str(tmp_path))  # downloads the files it is given
    user.predict("synthetic_clip_3", api_name="/load_sample")
    user.predict(api_name="/internalize")
    shown = user.predict(api_name="/download")  # the file component, made visible with the zip in it
    assert shown["visible"] is True
    path = Path(shown["value"])
    assert path.parent.parent == tmp_path and path.name == "synthetic_clip_3-1-lora.zip"
    with zipfile.ZipFile(path) as zipped:
        names = set(zipped.namelist())
        folder = path.stem
        assert {f"{folder}/adapter_config.json", f"{folder}/adapter_model.safetensors"} <= names
        config = json.loads(zipped.read(f"{folder}/adapter_config.json"))
    assert config["peft_type"] == "LORA" and config["r"] == 16


def test_ttft_chart_measures_adapter_and_in_context_at_each_frame_count(served, model):
    app, url = served
    user = client(url)
    user.predict("synthetic_clip", api_name="/load_sample")
    plot, points = user.predict(QUESTIONS[0], api_name="/ttft_chart")
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")
    assert [p["frames"] for p in points] == list(CHART_FRAMES)
    assert [p["visual_tokens"] for p in points] == [16 * n for n in CHART_FRAMES]
    assert all(p["adapter_ttft_s"] > 0 and p["in_context_ttft_s"] > 0 for p in points)
    # the chart's adapter is not left behind (other tests' sessions may end meanwhile, so only chart slots are checked)
    assert not [name for name in model.base_model.generated_adapters if name.endswith("_chart")]


def test_app_command_says_how_to_install_gradio_when_it_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    monkeypatch.setattr(cli, "load_model", lambda model_id: pytest.fail("the error must come before the model"))
    assert cli.main(["app"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'peft-hyper[app]'" in err and err.startswith("error: ")


def test_app_command_passes_its_options_to_the_server(monkeypatch):
    import peft_hyper.app

    calls = []
    monkeypatch.setattr(peft_hyper.app, "serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert cli.main(["app", "--model", "ckpt", "--host", "0.0.0.0", "--port", "7861", "--max-upload-mb", "5"]) == 0
    assert calls == [(("ckpt",), {"host": "0.0.0.0", "port": 7861, "max_upload_mb": 5.0})]
    for bad in (["--port", "0"], ["--max-upload-mb", "0"], ["--max-upload-mb", "inf"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(["app", *bad])
        assert exited.value.code == 2


SPACE = Path(__file__).resolve().parents[1] / "spaces" / "frames2lora"


def test_space_entry_point_builds_the_page(monkeypatch, model):
    import runpy

    import peft_hyper.app

    monkeypatch.setattr(peft_hyper.app, "load_model", lambda model_id: model)  # the checkpoint loaded once above
    monkeypatch.setenv("FRAMES2LORA_MAX_UPLOAD_MB", "7")
    space = runpy.run_path(str(SPACE / "app.py"), run_name="space_app")
    assert isinstance(space["demo"], gradio.Blocks) and space["app"].max_upload_mb == 7
    front_matter = (SPACE / "README.md").read_text().split("---")[1]
    assert f"sdk_version: {gradio.__version__}" in front_matter and "app_file: app.py" in front_matter


def test_space_requirements_pin_what_the_project_is_tested_with():
    def pins(path: Path) -> dict[str, str]:
        lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
        return dict(line.lower().split("==") for line in lines if "==" in line)

    tested, space = pins(SPACE.parents[1] / "constraints.txt"), pins(SPACE / "requirements.txt")
    assert space and {name: tested.get(name) for name in space} == space


def wait_for_page(url: str, process: subprocess.Popen, timeout: float = 120) -> float:
    """Seconds until `url` serves the page (HTTP 200), failing if `process` dies first."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no page at {url} after {timeout} s")


@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path):
    """`frames2lora app` in a subprocess, used from Debian's chromium (never a downloaded browser): pick the sample,
    internalize, ask with the comparison and without, measure the chart; the page's screenshot goes to
    `$APP_SCREENSHOTS/app.png` (default: the test's tmp dir; docs/images/app.png is one)."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    out = Path(os.environ.get("APP_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "peft_hyper.cli", "app", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seconds = wait_for_page(f"http://127.0.0.1:{port}/", process)
        print(f"start-up (command → page served): {seconds:.1f} s")
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1180})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_label("Sample clip (held-out synthetic world)").click()
            page.get_by_role("option", name="synthetic_clip", exact=True).click()
            page.locator("#strip img").wait_for()
            page.get_by_role("button", name="Internalize").click()
            page.get_by_text("internalized in").wait_for(timeout=60_000)
            for index, question in enumerate((QUESTIONS[0], "which way does the yellow square move?")):
                if index == 1:  # the second one adapter-only
                    page.get_by_label("Also with the video in context / no video").uncheck()
                page.locator("#question input").fill(question)
                page.keyboard.press("Escape")
                page.get_by_role("button", name="Ask", exact=True).click()
                page.locator("#chat table").nth(index).wait_for(timeout=60_000)  # one table of answers each
            page.get_by_role("button", name="Measure at").click()
            page.locator("#chart img").wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "app.png"), full_page=True)
            browser.close()
        from PIL import Image  # 256 colours: a fifth of the size, for the docs

        Image.open(out / "app.png").convert("RGB").quantize(256, dither=Image.Dither.NONE).save(out / "app.png")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert (out / "app.png").stat().st_size > 10_000
