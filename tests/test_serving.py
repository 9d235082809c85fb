"""Serving with vLLM, the parts that need no vLLM: the server's command derived from a checkpoint, the checks an
adapter passes before a server is asked to load it, `frames2lora serve`'s refusals, the client against a stand-in
HTTP server and a server that fails to start. The real server is exercised by the slow `test_vllm_serving.py`."""

from __future__ import annotations

import json
import shlex
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import small_config
from peft import get_peft_model
from transformers import AutoProcessor, SmolVLMForConditionalGeneration

from peft_hyper import AdapterRankError, HyperLoraConfig, IncompatibleBaseModelError, ServingError, cli
from peft_hyper.errors import CheckpointError, UsageError
from peft_hyper.inputs import text_prompt
from peft_hyper.serving import (
    VLLM_LORA_RANKS,
    ServedBase,
    VllmClient,
    VllmServeArgs,
    VllmServer,
    check_adapter,
    read_lora_adapter,
    vllm_lora_rank,
    vllm_serve_args,
)

# small_config: r = bias_rank = 4, so generated adapters have rank 8; 4 frames in 1-frame segments compose to 4·4 + 4.
TOTAL_RANK, COMPOSED_RANK = 8, 20


@pytest.fixture(scope="module")
def checkpoint(tiny_base_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "frames2lora-tiny"
    vlm = SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir)
    get_peft_model(vlm, small_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapters(tiny_base_dir, other_base_dir, clips, tmp_path_factory) -> dict[str, Path]:
    """Adapter directories written by `save_adapter`: one of the checkpoint's rank, one composed from four segments
    (a larger rank), and one generated on another base model."""
    folder = tmp_path_factory.mktemp("adapters")
    written = {}
    for base, name, segment_frames in ((tiny_base_dir, "clip", None), (tiny_base_dir, "composed", 1)):
        model = get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(base).eval(), small_config())
        model.internalize(clips[0], adapter_name=name, num_frames=4, segment_frames=segment_frames)
        model.save_adapter(name, folder / name)
        written[name] = folder / name
    other = get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(other_base_dir).eval(), small_config())
    other.internalize(clips[0], adapter_name="other")
    other.save_adapter("other", folder / "other")
    written["other"] = folder / "other"
    return written


@pytest.fixture(scope="module")
def served(tiny_base_dir) -> ServedBase:
    return ServedBase.from_pretrained(tiny_base_dir)


# --- ranks and the command


@pytest.mark.parametrize(
    ("rank", "served_rank"), [(1, 1), (8, 8), (9, 16), (16, 16), (17, 32), (300, 320), (321, 512), (512, 512)]
)
def test_the_rank_is_rounded_up_to_one_vllm_takes(rank, served_rank):
    assert vllm_lora_rank(rank) == served_rank


def test_a_rank_above_vllms_largest_is_refused_with_the_cap_to_use():
    with pytest.raises(AdapterRankError, match="--max-rank 512"):
        vllm_lora_rank(VLLM_LORA_RANKS[-1] + 1)


def test_the_embedded_default_is_served_at_its_total_rank_in_float32():
    config = HyperLoraConfig.from_pretrained(cli.default_model())
    args = vllm_serve_args(config, port=8123)
    assert (args.max_lora_rank, args.requested_rank) == (config.total_rank, config.total_rank) == (16, 16)
    assert Path(args.base_model, "config.json").is_file()  # the package path is resolved for vLLM
    command = args.command("/venv/bin/python")
    assert command[:5] == [
        "/venv/bin/python",
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        args.base_model,
    ]
    text = shlex.join(command)
    for option in ("--enable-lora", "--max-lora-rank 16", "--max-loras 4", "--dtype float32", "--port 8123"):
        assert option in text
    assert json.loads(command[command.index("--limit-mm-per-prompt") + 1]) == {"image": 0, "video": 0}
    assert args.env() == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    assert args.vllm_serve_command().startswith(f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve {args.base_model} ")
    assert args.url == "http://127.0.0.1:8123"


def test_adapters_given_at_start_raise_the_rank_and_are_loaded_by_name(checkpoint, adapters):
    config = HyperLoraConfig.from_pretrained(str(checkpoint))
    args = vllm_serve_args(config, {"a": adapters["clip"], "b": adapters["composed"]}, extra_args=["--seed", "3"])
    assert (args.requested_rank, args.max_lora_rank, args.max_loras) == (COMPOSED_RANK, 32, 4)
    assert args.adapters == (("a", str(adapters["clip"].resolve())), ("b", str(adapters["composed"].resolve())))
    server_args = args.server_args()
    start = server_args.index("--lora-modules") + 1
    assert server_args[start : start + 2] == [f"a={adapters['clip'].resolve()}", f"b={adapters['composed'].resolve()}"]
    assert server_args[-2:] == ["--seed", "3"]
    assert vllm_serve_args(config).max_lora_rank == TOTAL_RANK
    assert vllm_serve_args(config, max_lora_rank=9).max_lora_rank == 16


def test_a_max_lora_rank_below_the_adapters_is_refused(checkpoint, adapters):
    config = HyperLoraConfig.from_pretrained(str(checkpoint))
    with pytest.raises(UsageError, match=f"below the rank of the adapters to serve \\({COMPOSED_RANK}"):
        vllm_serve_args(config, {"b": adapters["composed"]}, max_lora_rank=16)


# --- adapter checks


def test_an_adapter_is_read_from_its_header(adapters, tiny_base_dir, served):
    info = read_lora_adapter(adapters["composed"])
    assert info.rank == COMPOSED_RANK
    assert info.base_model_name_or_path == str(Path(tiny_base_dir).resolve())
    assert set(info.module_shapes) <= set(served.linear_shapes)
    assert all(".text_model.layers." in name for name in served.linear_shapes)
    check_adapter(info, served, max_lora_rank=32)


def test_an_adapter_for_another_base_is_refused_by_its_shapes(adapters, served):
    with pytest.raises(IncompatibleBaseModelError, match=r"does not fit the served base model .*\(in, out\)"):
        check_adapter(read_lora_adapter(adapters["other"]), served)


def test_an_adapter_recording_another_base_by_name_is_refused(adapters, served, tmp_path):
    renamed = Path(shutil.copytree(adapters["clip"], tmp_path / "renamed"))
    config = json.loads((renamed / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/another-smolvlm"
    (renamed / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleBaseModelError, match="generated for the base model 'someone/another-smolvlm'"):
        check_adapter(read_lora_adapter(renamed), served)


def test_an_adapter_above_the_servers_rank_is_refused_with_what_to_do(adapters, served):
    with pytest.raises(AdapterRankError, match="rank 20, above the server's limit .*--max-lora-rank 32"):
        check_adapter(read_lora_adapter(adapters["composed"]), served, max_lora_rank=16)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path, ckpt: path, "not a LoRA adapter directory"),
        (lambda path, ckpt: ckpt, "is a Frames2LoRA checkpoint, not a video's adapter"),
    ],
)
def test_what_is_not_an_adapter_directory_is_refused(tmp_path, checkpoint, make, message):
    with pytest.raises(CheckpointError, match=message):
        read_lora_adapter(make(tmp_path, checkpoint))


def test_the_client_refuses_before_contacting_the_server(adapters, tiny_base_dir):
    # nothing listens on port 9 (discard): a refusal that is not a ServingError came from the client's own check
    client = VllmClient("http://127.0.0.1:9", base_model=tiny_base_dir, max_lora_rank=16, timeout=5)
    with pytest.raises(AdapterRankError):
        client.load_adapter("composed", adapters["composed"])
    with pytest.raises(IncompatibleBaseModelError):
        client.load_adapter("other", adapters["other"])
    with pytest.raises(UsageError, match="adapter name '__base__'"):
        client.load_adapter("__base__", adapters["clip"])
    with pytest.raises(ServingError, match="no vLLM server answers at http://127.0.0.1:9"):
        client.load_adapter("clip", adapters["clip"])  # passes the checks, then finds no server


# --- the client over HTTP, against a stand-in that answers as vLLM's OpenAI-compatible server does


class StandIn(BaseHTTPRequestHandler):
    base = ""
    requests: list[tuple[str, dict]] = []

    def do_GET(self):  # noqa: N802
        cards = [
            {"id": self.base, "root": self.base, "parent": None},
            {"id": "clip", "root": "/x", "parent": self.base},
        ]
        self._send(200, {"object": "list", "data": cards})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if self.path == "/v1/load_lora_adapter" and body["lora_name"] == "big":
            message = "LoRA rank 20 is greater than max_lora_rank 16."
            return self._send(500, {"error": {"message": message, "type": "InternalServerError", "code": 500}})
        if self.path == "/v1/completions":
            choices = [
                {"index": i, "text": f" {body['model']}|{prompt} ", "prompt_token_ids": [i], "token_ids": [7]}
                for i, prompt in enumerate(body["prompt"])
            ]
            return self._send(200, {"choices": choices[::-1]})  # out of order, as the client must not rely on it
        return self._send(200, "Success")

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in(tiny_base_dir):
    StandIn.base, StandIn.requests = str(Path(tiny_base_dir).resolve()), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_the_client_asks_each_adapter_in_one_request_with_peft_hypers_prompts(stand_in, tiny_base_dir):
    client = VllmClient(stand_in)
    assert client.base_model == StandIn.base and client.adapters() == ["clip"]
    questions = ["what colour?", "how many?", "which way?"]
    answers = client.answer(questions, adapter_names=["clip", "__base__", "clip"], max_new_tokens=5)
    processor = AutoProcessor.from_pretrained(tiny_base_dir)
    expected = [
        f"clip|{text_prompt(processor, questions[0])}",
        f"{StandIn.base}|{text_prompt(processor, questions[1])}",
    ]
    assert answers == [expected[0], expected[1], f"clip|{text_prompt(processor, questions[2])}"]
    bodies = sorted((body for path, body in StandIn.requests if path == "/v1/completions"), key=lambda b: b["model"])
    assert [len(body["prompt"]) for body in bodies] == [1, 2] and bodies[1]["model"] == "clip"
    assert all(body["temperature"] == 0.0 and body["max_tokens"] == 5 for body in bodies)
    assert client.answer("how many?", "clip") == f"clip|{text_prompt(processor, 'how many?')}"


def test_the_client_replaces_a_loaded_name_and_surfaces_the_servers_refusals(stand_in, adapters):
    client = VllmClient(stand_in)  # no rank limit known: the server's check is the one that speaks
    client.load_adapter("clip", adapters["clip"])
    assert [path for path, _ in StandIn.requests] == ["/v1/unload_lora_adapter", "/v1/load_lora_adapter"]
    assert StandIn.requests[-1][1] == {"lora_name": "clip", "lora_path": str(adapters["clip"].resolve())}
    with pytest.raises(AdapterRankError, match="refused the adapter .*LoRA rank 20 is greater than max_lora_rank 16"):
        client.load_adapter("big", adapters["composed"])


# --- the server process


def test_a_server_that_exits_while_starting_is_reported_with_its_log(tmp_path):
    env = tmp_path / "venv"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("#!/bin/sh\necho 'ValueError: no memory for the KV cache'\nexit 3\n")
    (env / "bin" / "python").chmod(0o755)
    args = VllmServeArgs(base_model="base", max_lora_rank=16, requested_rank=16, max_loras=1, port=9)
    with pytest.raises(ServingError, match=r"exited with status 3 while starting(.|\n)*no memory for the KV cache"):
        VllmServer(args, vllm_env=env, log_path=tmp_path / "server.log", startup_timeout=60).start()


def test_no_vllm_environment_says_how_to_make_one(tmp_path):
    with pytest.raises(ServingError, match="run scripts/setup_vllm.sh"):
        VllmServer(VllmServeArgs("base", 16, 16, 1), vllm_env=tmp_path / "missing")


# --- frames2lora serve


def run_cli(capsys, argv):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_serve_prints_the_command_with_the_checkpoints_rank(capsys, checkpoint, adapters):
    argv = ["serve", "--model", str(checkpoint), "--adapters", f"big={adapters['composed']}", str(adapters["clip"])]
    status, out, err = run_cli(capsys, [*argv, "--port", "8011", "--print-command", "--", "--max-cpu-loras", "64"])
    assert status == 0
    command = out.splitlines()[0]
    assert command.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ")
    assert "--max-lora-rank 32" in command and command.endswith("--max-cpu-loras 64")
    assert f"--lora-modules big={adapters['composed'].resolve()} clip={adapters['clip'].resolve()}" in command
    assert f"max LoRA rank 32: {COMPOSED_RANK} rounded up to a rank vLLM takes" in err
    assert "vllm serve " in out.splitlines()[-1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adapters", "{other}"], "does not fit the served base model"),
        (["--adapters", "{composed}", "--max-lora-rank", "16"], "--max-lora-rank 16 is below the rank"),
        (["--adapters", "{clip}", "x=/nowhere"], "'/nowhere' is not a LoRA adapter directory"),
        (["--adapters", "{clip}", "clip={composed}"], "two adapters are named 'clip'"),
        (["--vllm-env", "/nowhere"], "no vLLM environment at /nowhere: run scripts/setup_vllm.sh"),
    ],
)
def test_serve_refuses_in_one_line(capsys, checkpoint, adapters, extra, message):
    extra = [part.format(**adapters) for part in extra]
    status, out, err = run_cli(capsys, ["serve", "--model", str(checkpoint), *extra])
    assert status == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err, err


def test_serve_refuses_a_plain_lora_adapter_as_the_checkpoint(capsys, adapters):
    status, _, err = run_cli(capsys, ["serve", "--model", str(adapters["clip"]), "--print-command"])
    assert status == 2 and "is a plain LoRA adapter" in err


def test_serve_runs_the_server_in_the_vllm_environment_and_returns_its_status(capsys, checkpoint, tmp_path):
    env, record = tmp_path / "venv", tmp_path / "argv.txt"
    (env / "bin").mkdir(parents=True)
    script = f'#!/bin/sh\necho "$VLLM_ALLOW_RUNTIME_LORA_UPDATING $@" > {record}\nexit 7\n'
    (env / "bin" / "python").write_text(script)
    (env / "bin" / "python").chmod(0o755)
    status, _, err = run_cli(capsys, ["serve", "--model", str(checkpoint), "--vllm-env", str(env), "--port", "8012"])
    assert status == 7  # vLLM's own exit status
    ran = record.read_text()
    assert ran.startswith("True -m vllm.entrypoints.launchers.api_server.entry --model ")
    assert "--max-lora-rank 8" in ran and "--port 8012" in ran
    assert "serving 0 adapter(s) at http://127.0.0.1:8012/v1" in err
