"""Serving generated adapters with a real vLLM server (slow; needs `.venv-vllm`, made by `scripts/setup_vllm.sh`).

Held-out clips of the synthetic world (the test split, 12 frames at 64 px, as the embedded default's evaluation set)
are internalized with the shipped checkpoint; their adapters go into ONE running server, some at start and some at
runtime through `/v1/load_lora_adapter`; every question is answered greedily by the server and by peft-hyper's
mixed-adapter `answer`, and the answers must be identical, word for word, with the same prompt tokens. An adapter for
another base model and one above the server's rank limit are refused with a clear message.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from conftest import small_config
from peft import AutoPeftModel, get_peft_model
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import AdapterRankError, IncompatibleBaseModelError, ServingError, cli
from peft_hyper.serving import VllmClient, VllmServer, find_vllm_env, vllm_serve_args
from peft_hyper.testing.world import make_dataset

pytestmark = pytest.mark.slow

NUM_CLIPS = 6
AT_START = 3  # adapters given to the server at start (--lora-modules); the others are loaded at runtime


def vllm_env_or_skip():
    try:
        return find_vllm_env()
    except ServingError as exc:
        pytest.skip(f"no vLLM environment ({exc})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_base_dir, clips):
    vllm_env = vllm_env_or_skip()
    folder = tmp_path_factory.mktemp("vllm")
    data = make_dataset(NUM_CLIPS, seed=0, num_frames=12, size=64, video_dir=folder / "videos", split="test")
    model = AutoPeftModel.from_pretrained(cli.default_model()).eval()
    tuner = model.base_model
    names, adapter_dirs = [], {}
    for index, video in enumerate(dict.fromkeys(data["video"])):  # one clip per distinct video, in order
        name = f"clip{index}"
        tuner.internalize(video, adapter_name=name)
        tuner.save_adapter(name, folder / "adapters" / name)
        names.append(name)
        adapter_dirs[name] = folder / "adapters" / name
    # above the server's limit: 12 frames in segments of 4 compose to rank 3·8 + 8 = 32 (the server takes 16)
    tuner.internalize(data["video"][0], adapter_name="composed", segment_frames=4, activate=False)
    tuner.save_adapter("composed", folder / "adapters" / "composed")
    # for another base: a tiny test SmolVLM's hypernetwork
    other = get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir).eval(), small_config())
    other.internalize(clips[0], adapter_name="other")
    other.save_adapter("other", folder / "adapters" / "other")
    clip_names = {video: names[i] for i, video in enumerate(dict.fromkeys(data["video"]))}
    rows = [row for row in data if row["task_type"] != "caption"]
    return {
        "vllm_env": vllm_env,
        "model": tuner,
        "config": model.peft_config["default"],
        "adapters": adapter_dirs,
        "composed": folder / "adapters" / "composed",
        "other": folder / "adapters" / "other",
        "questions": [row["prompt"] for row in rows],
        "truth": [row["target"] for row in rows],
        "names": [clip_names[row["video"]] for row in rows],
        "log": folder / "server.log",
    }


@pytest.fixture(scope="module")
def server(setup):
    at_start = {name: path for name, path in list(setup["adapters"].items())[:AT_START]}
    # the default --max-loras (4) is below the number of adapters: vLLM mixes 4 per batch and swaps the others in
    args = vllm_serve_args(setup["config"], at_start, port=free_port())
    assert args.max_loras < NUM_CLIPS
    with VllmServer(args, vllm_env=setup["vllm_env"], log_path=setup["log"]) as running:
        yield running


def test_vllm_answers_as_peft_hyper_does_with_the_same_adapters(setup, server):
    client = server.client(processor=setup["model"].processor)
    for name, path in list(setup["adapters"].items())[AT_START:]:
        client.load_adapter(name, path)
    assert sorted(client.adapters()) == sorted(setup["adapters"])
    questions, names = setup["questions"], setup["names"]
    assert len(questions) >= 50 and len(set(names)) >= 5

    served = client.answer(questions, adapter_names=names)
    local = setup["model"].answer(questions, adapter_names=names)
    identical = sum(a == b for a, b in zip(served, local, strict=True))
    correct = sum(a == t for a, t in zip(served, setup["truth"], strict=True))
    print(
        f"\n{len(questions)} questions, {len(set(names))} adapters in one server ({AT_START} at start, "
        f"{len(set(names)) - AT_START} loaded at runtime): {identical}/{len(questions)} answers identical to "
        f"peft-hyper's mixed-adapter answer; {correct}/{len(questions)} match the ground truth"
    )
    for question, name, a, b, truth in list(zip(questions, names, served, local, setup["truth"], strict=True))[:8]:
        print(f"  {name}: {question!r} -> vLLM {a!r} | peft-hyper {b!r} | truth {truth!r}")
    assert served == local

    # the same prompt tokens as peft-hyper's: the chat template is applied once, by `inputs.text_prompt`
    completions = client.complete(questions[:5], names[0])
    expected_ids = setup["model"].text_inputs(questions[:5], padding_side="right")
    for index, completion in enumerate(completions):
        mask = expected_ids["attention_mask"][index].bool()
        assert completion.prompt_token_ids == expected_ids["input_ids"][index][mask].tolist()


def test_an_adapter_for_another_base_is_refused(setup, server):
    client = server.client()
    with pytest.raises(IncompatibleBaseModelError, match="does not fit the served base model") as refusal:
        client.load_adapter("other", setup["other"])
    print(f"\nclient refusal: {refusal.value}")
    # what vLLM itself makes of it, without our check (reported; the check above is what protects the user)
    body = json.dumps({"lora_name": "other-raw", "lora_path": str(setup["other"])}).encode()
    request = urllib.request.Request(
        server.url + "/v1/load_lora_adapter", body, {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            print(f"vLLM alone: HTTP {response.status} {response.read()[:300]!r}")
    except urllib.error.HTTPError as exc:
        print(f"vLLM alone: HTTP {exc.code} {exc.read()[:300]!r}")
    assert "other" not in client.adapters()


def test_an_adapter_above_the_servers_rank_is_refused_by_the_client_and_by_the_server(setup, server):
    with pytest.raises(AdapterRankError, match="rank 32, above the server's limit \\(--max-lora-rank 16\\)") as ours:
        server.client().load_adapter("composed", setup["composed"])
    # a client that does not know the limit: vLLM refuses, and the client says so in the same terms
    unaware = VllmClient(server.url)
    with pytest.raises(AdapterRankError, match="LoRA rank 32 is greater than max_lora_rank 16") as theirs:
        unaware.load_adapter("composed", setup["composed"])
    print(f"\nclient: {ours.value}\nserver: {theirs.value}")
    assert "composed" not in unaware.adapters()
    # the server still serves after the refusals
    name = next(iter(setup["adapters"]))
    assert unaware.answer(setup["questions"][0], name) == setup["model"].answer(setup["questions"][0], name)
