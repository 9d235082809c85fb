"""`HyperLoraTrainer`, teacher caching, checkpoints, multi-process training and Hub upload (tiny offline SmolVLM).

Runs a few short trainings on 4-frame 32px torchcodec clips; the subprocess tests (SIGKILL + resume, accelerate with
two processes) use `examples/train_frames2lora.py` exactly as a user would.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import httpx2
import huggingface_hub
import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from huggingface_hub.utils import _http as hf_http
from peft import get_peft_model
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file
from transformers import AutoProcessor, SmolVLMForConditionalGeneration, TrainingArguments

import peft_hyper
from peft_hyper.data import (
    DatasetValidationError,
    VideoGroupedSampler,
    VideoTextCollator,
    load_manifest,
    validate_dataset,
)
from peft_hyper.testing.models import save_tiny_smolvlm
from peft_hyper.testing.videos import make_test_frames, write_video
from peft_hyper.trainer import (
    CHECKPOINT_COMPLETE_NAME,
    HyperLoraTrainer,
    cache_teacher_targets,
    distillation_loss,
    is_complete_checkpoint,
    last_complete_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_frames2lora.py"
TINY_CONFIG = {"r": 4, "latent_dim": 32, "num_latents": 4, "num_blocks": 2, "num_heads": 2, "head_dim": 16}
TARGETS = ["A red square moves to the left.", "A green circle rises slowly."]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on 2 shared cores, 2 threads per process ran several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A saved tiny SmolVLM, 8 clips and a reference-format manifest over them (relative video paths)."""
    root = tmp_path_factory.mktemp("frames2lora")
    save_tiny_smolvlm(root / "tiny-smolvlm", seed=0)
    with (root / "train.jsonl").open("w") as f:
        for i in range(8):
            write_video(make_test_frames(8, 32, 32, seed=i), root / "videos" / f"clip{i}.mp4", fps=4)
            record = {"id": f"clip{i}", "video_path": f"videos/clip{i}.mp4", "prompt": "Describe the video.",
                      "task_type": "caption", "target_text": TARGETS[i % 2]}  # fmt: skip
            f.write(json.dumps(record) + "\n")
    return root


def make_model(workdir: Path, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    vlm = SmolVLMForConditionalGeneration.from_pretrained(workdir / "tiny-smolvlm")
    model = get_peft_model(vlm, peft_hyper.HyperLoraConfig(**{**TINY_CONFIG, "num_frames": 4, **overrides}))
    model.set_processor(AutoProcessor.from_pretrained(workdir / "tiny-smolvlm"))
    return model


def training_args(output_dir: Path, **kwargs) -> TrainingArguments:
    defaults = {"per_device_train_batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
                "report_to": [], "use_cpu": True, "seed": 0, "disable_tqdm": True}  # fmt: skip
    return TrainingArguments(output_dir=str(output_dir), **{**defaults, **kwargs})


def vlm_snapshot(model) -> dict[str, torch.Tensor]:
    """The frozen VLM's weights and buffers (PEFT LoRA layers of generated adapters left out)."""
    state = model.base_model.model.state_dict()
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in state.items() if ".lora_" not in k}


def adapter_only_ce(model, dataset: Dataset) -> float:
    """Mean CE of each row's target with its *generated PEFT adapter* active and no video in context."""
    tuner = model.base_model
    collator = VideoTextCollator.from_model(model)
    losses = []
    with torch.no_grad():
        for row in dataset:
            tuner.internalize(row["video"], adapter_name="probe")
            batch = collator([row])
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            losses.append(out.loss.item())
    tuner.set_adapter("default")
    return sum(losses) / len(losses)


def run_script(args: list[str], output_dir: Path, **popen_kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "--output_dir", str(output_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen_kwargs,
    )


def script_args(workdir: Path, *extra: str) -> list[str]:
    return [
        "--model", str(workdir / "tiny-smolvlm"), "--train_manifest", str(workdir / "train.jsonl"),
        "--r", "4", "--latent_dim", "32", "--num_latents", "4", "--num_blocks", "2", "--num_heads", "2",
        "--head_dim", "16", "--num_frames", "4", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
        "--report_to", "none", "--use_cpu", "--logging_steps", "1", "--disable_tqdm", "true", "--seed", "0", *extra,
    ]  # fmt: skip


def hypernetwork_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


# ---------------------------------------------------------------------------------------------------------- learning
def test_short_run_learns_and_leaves_vlm_bit_identical(workdir, tmp_path):
    model = make_model(workdir)
    dataset = load_manifest(workdir / "train.jsonl")
    ce_before = adapter_only_ce(model, dataset)
    frozen = vlm_snapshot(model)
    steps, batch_size = 16, 4
    trainer = HyperLoraTrainer(
        model, training_args(tmp_path, max_steps=steps, per_device_train_batch_size=batch_size), train_dataset=dataset
    )
    assert trainer.args.remove_unused_columns is False
    start = time.perf_counter()
    trainer.train()
    throughput = steps * batch_size / (time.perf_counter() - start)
    print(f"\nHyperLoraTrainer throughput (tiny SmolVLM, 4x32px frames, ce): {throughput:.1f} examples/s")

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    assert all("ce" in entry for entry in trainer.state.log_history if "loss" in entry)
    ce_after = adapter_only_ce(model, dataset)
    assert ce_after < ce_before - 0.05, (ce_before, ce_after)

    after = vlm_snapshot(model)
    assert after.keys() == frozen.keys()
    changed = [name for name in frozen if not torch.equal(frozen[name], after[name])]
    assert not changed, f"frozen VLM weights changed: {changed[:3]}"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".hypernetworks." in n for n in trainable)


@pytest.mark.parametrize(("objective", "top_k"), [("kl", None), ("ce+kl", 5)])
def test_objectives_run(workdir, tmp_path, objective, top_k):
    model = make_model(workdir)
    dataset = load_manifest(workdir / "train.jsonl").select(range(4))
    trainer = HyperLoraTrainer(
        model, training_args(tmp_path, max_steps=2), train_dataset=dataset, objective=objective, kl_top_k=top_k
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert torch.isfinite(torch.tensor(entry["loss"]))
        assert entry["kl"] > 0  # the student has no video: it differs from the teacher
        assert ("ce" in entry) == (objective == "ce+kl")
        if objective == "ce+kl":
            assert entry["loss"] == pytest.approx(entry["ce"] + entry["kl"], rel=1e-4)


def test_distillation_loss_properties():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 11), torch.randn(5, 11)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    full = distillation_loss(student, teacher)
    expected = torch.nn.functional.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True,
                                          reduction="batchmean")  # fmt: skip
    assert full.item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(student, teacher, top_k=11).item() == pytest.approx(full.item(), rel=1e-5)
    assert distillation_loss(student, teacher, top_k=3).item() > 0
    assert distillation_loss(student, teacher, temperature=2.0).item() != pytest.approx(full.item())


def test_l1_penalty_changes_the_loss(workdir, tmp_path):
    model = make_model(workdir)
    dataset = load_manifest(workdir / "train.jsonl").select(range(2))
    trainer = HyperLoraTrainer(model, training_args(tmp_path), train_dataset=dataset, l1_penalty=0.5)
    batch = trainer.data_collator([dataset[0], dataset[1]])
    model.train()
    with torch.no_grad():
        with_l1 = trainer.compute_loss(model, dict(batch)).item()
        trainer.l1_penalty = 0.0
        without = trainer.compute_loss(model, dict(batch)).item()
        tuner = model.base_model
        hyper = {k.removeprefix("hyper_"): v for k, v in batch.items() if k.startswith("hyper_")}
        factors = tuner.generate_lora_factors(hyper)
        l1 = sum(a.abs().mean() + b.abs().mean() for a, b in factors.values()).item() / len(factors)
    assert l1 > 0
    assert with_l1 - without == pytest.approx(0.5 * l1, rel=1e-4)


def test_rows_about_one_video_share_its_adapter(workdir, tmp_path):
    model = make_model(workdir)
    for name, param in model.named_parameters():
        if name.endswith("scale_b"):  # ΔW = 0 at init would make every adapter give the same loss
            param.data.fill_(1.0)
    clip0, clip1 = str(workdir / "videos" / "clip0.mp4"), str(workdir / "videos" / "clip1.mp4")
    dataset = Dataset.from_list([
        {"video": clip0, "prompt": "Describe the video.", "target": TARGETS[0]},
        {"video": clip1, "prompt": "Describe the video.", "target": TARGETS[1]},
        {"video": clip0, "prompt": "What moves?", "target": "The square."},
    ])  # fmt: skip
    trainer = HyperLoraTrainer(
        model, training_args(tmp_path, max_steps=2, per_device_train_batch_size=3), train_dataset=dataset,
        objective="ce+kl", rows_per_video=2,
    )  # fmt: skip
    assert isinstance(trainer._get_train_sampler(), VideoGroupedSampler)
    batch = trainer.data_collator([dataset[i] for i in range(3)])
    assert batch["hyper_input_ids"].shape[0] == 2 and batch["video_index"].tolist() == [0, 1, 0]

    def with_videos_per_row(index: list[int]) -> dict:
        """The batch as if each row had brought its own copy of video `index[row]`."""
        rows = torch.tensor(index)
        return {k: (v[rows] if k.startswith("hyper_") else v) for k, v in batch.items() if k != "video_index"}

    with torch.no_grad():
        shared = trainer.compute_loss(model, dict(batch)).item()
        per_row = trainer.compute_loss(model, with_videos_per_row([0, 1, 0])).item()
        swapped = trainer.compute_loss(model, with_videos_per_row([1, 0, 1])).item()
    assert shared == pytest.approx(per_row, rel=1e-6)
    assert abs(shared - swapped) > 1e-4, "the loss depends on which video's adapter a row gets"

    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logged)
    with pytest.raises(ValueError, match="rows_per_video"):
        HyperLoraTrainer(model, training_args(tmp_path), train_dataset=dataset, rows_per_video=0)


@pytest.mark.parametrize("options", [{}, {"segment_scaling": "sqrt", "time_encoding": True}], ids=["sum", "sqrt+time"])
def test_training_through_composition_is_the_loss_of_the_composed_adapter(workdir, tmp_path, options):
    model = make_model(workdir, **options)
    for name, param in model.named_parameters():
        if name.endswith("scale_b"):  # non-zero generated ranks, so the segments' adapters matter
            param.data.fill_(1.0)
        if "time_proj" in name:  # a time signal, so that each segment's place in the video matters
            torch.nn.init.normal_(param, std=1.0)
    tuner = model.base_model
    dataset = load_manifest(workdir / "train.jsonl").select(range(2))
    trainer = HyperLoraTrainer(
        model, training_args(tmp_path, max_steps=2), train_dataset=dataset, segment_frames=2, num_frames=4
    )
    batch = trainer.data_collator([dataset[0], dataset[1]])
    assert batch["segment_video"].tolist() == [0, 0, 1, 1] and batch["hyper_input_ids"].shape[0] == 4
    spans = batch["video_time_spans"]  # each segment's first and last frame time in its video
    assert spans.shape == (4, 2) and spans[1, 0] > spans[0, 1] and torch.equal(spans[0], spans[2])

    model.eval()
    with torch.no_grad():
        for row in dataset:  # one row per batch: compute_loss's token mean is then that row's CE
            trained = trainer.compute_loss(model, trainer.data_collator([row])).item()
            tuner.internalize(row["video"], adapter_name="composed", num_frames=4, segment_frames=2)  # rank 2·4 + 4
            single = VideoTextCollator.from_model(model)([row])
            served = model(**{k: single[k] for k in ("input_ids", "attention_mask", "labels")}).loss.item()
            assert trained == pytest.approx(served, rel=1e-5)
    tuner.set_adapter("default")

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "time_proj" in n}
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logged)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)  # time is learned
    with pytest.raises(ValueError, match="segment_frames=2"):
        HyperLoraTrainer(model, training_args(tmp_path), train_dataset=dataset, segment_frames=2,
                         data_collator=VideoTextCollator.from_model(model))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- bad input
def test_bad_datasets_fail_before_training_and_bad_rows_are_counted(workdir, tmp_path):
    model = make_model(workdir)
    args = training_args(tmp_path, max_steps=1)
    with pytest.raises(DatasetValidationError, match="empty"):
        HyperLoraTrainer(model, args, train_dataset=Dataset.from_dict({"video": [], "prompt": [], "target": []}))
    with pytest.raises(DatasetValidationError, match="lacks column"):
        HyperLoraTrainer(model, args, train_dataset=Dataset.from_dict({"video": ["a.mp4"], "prompt": ["p"]}))
    with pytest.raises(ValueError, match="objective must be one of"):
        HyperLoraTrainer(model, args, objective="mse")
    with pytest.raises(TypeError, match="PeftModel around a HyperLoraModel"):
        HyperLoraTrainer(model.base_model.model, args)

    # A batch whose rows are all unreadable gives a zero loss and a count, not a crash mid-epoch.
    broken = Dataset.from_dict({"id": ["x", "y"], "video": [str(tmp_path / "no1.mp4"), str(tmp_path / "no2.mp4")],
                                "prompt": ["p", "p"], "target": ["t", "t"]})  # fmt: skip
    trainer = HyperLoraTrainer(model, training_args(tmp_path, max_steps=1), train_dataset=broken)
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logged["loss"] == 0.0 and logged["skipped_rows"] == 2 and trainer.num_skipped_rows == 2

    strict = HyperLoraTrainer(model, training_args(tmp_path, max_steps=1), train_dataset=broken, on_bad_row="raise")
    with pytest.raises(peft_hyper.PeftHyperError, match="Row [xy]: cannot load its video"):
        strict.train()


# ---------------------------------------------------------------------------------------------------------- checkpoints
def test_resume_after_sigkill_matches_uninterrupted_run(workdir, tmp_path):
    args = script_args(workdir, "--max_steps", "10", "--save_steps", "2")
    reference = run_script(args, tmp_path / "reference")
    out, _ = reference.communicate(timeout=240)
    assert reference.returncode == 0, out[-3000:]

    interrupted_dir = tmp_path / "interrupted"
    victim = run_script(args, interrupted_dir)
    marker = interrupted_dir / "checkpoint-2" / CHECKPOINT_COMPLETE_NAME
    deadline = time.monotonic() + 180
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    out, _ = victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"training ended before it could be killed:\n{out[-3000:]}"
    assert not (interrupted_dir / "adapter_model.safetensors").exists()
    resumed_from = last_complete_checkpoint(interrupted_dir)
    assert resumed_from is not None
    step = int(Path(resumed_from).name.split("-")[1])
    assert step < 10

    # A checkpoint cut off mid-write (newer than the last complete one) must never be picked up.
    partial = interrupted_dir / f"checkpoint-{step + 2}"
    partial.mkdir(exist_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"\x00" * 17)
    (partial / CHECKPOINT_COMPLETE_NAME).unlink(missing_ok=True)
    assert not is_complete_checkpoint(partial)

    resumed = run_script([*args, "--resume_from_checkpoint", "True"], interrupted_dir)
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out[-3000:]
    assert (interrupted_dir / f"checkpoint-{step + 2}.incomplete").is_dir()
    assert is_complete_checkpoint(interrupted_dir / f"checkpoint-{step + 2}")
    state = json.loads((interrupted_dir / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10

    expected = hypernetwork_weights(tmp_path / "reference")
    got = hypernetwork_weights(interrupted_dir)
    assert expected.keys() == got.keys()
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run by {worst}"


def test_resume_from_an_incomplete_checkpoint_path_is_refused(workdir, tmp_path):
    model = make_model(workdir)
    dataset = load_manifest(workdir / "train.jsonl").select(range(2))
    (tmp_path / "checkpoint-7").mkdir()
    trainer = HyperLoraTrainer(model, training_args(tmp_path, max_steps=1), train_dataset=dataset)
    with pytest.raises(ValueError, match="not a complete HyperLoraTrainer checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-7"))
    with pytest.raises(ValueError, match="No complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


# ---------------------------------------------------------------------------------------------------------- processes
def _load_example():
    spec = importlib.util.spec_from_file_location("train_frames2lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_two_processes_end_with_identical_weights(workdir, tmp_path):
    digests = tmp_path / "digests"
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(SCRIPT),
    ]  # fmt: skip
    args = script_args(workdir, "--max_steps", "4", "--weights_digest_dir", str(digests))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*launcher, *args, "--output_dir", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [4, 4]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # The two ranks saw different rows, so equal weights mean gradients were synchronised (DDP over gloo).
    example = _load_example()
    assert ranks[0]["sha256"] != example.hypernetwork_digest(make_model(workdir))


# ---------------------------------------------------------------------------------------------------------- hub
class FakeHub:
    """The Hub's HTTP API, answered in-process: `huggingface_hub`'s real `HfApi` code runs, only the transport is fake.

    Records created repos, the README contents sent to /api/validate-yaml and each commit's files (path → bytes).
    """

    def __init__(self) -> None:
        self.created: list[str] = []
        self.validated: list[str] = []
        self.commits: list[dict[str, bytes]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "POST" and path == "/api/repos/create":
            body = json.loads(request.content)
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            self.created.append(repo_id)
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo_id}"})
        if path == "/api/validate-yaml":
            self.validated.append(json.loads(request.content)["content"])
            return httpx2.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(
                200,
                json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
            )
        if "/commit/" in path:
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            self.commits.append(files)
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/c/abc", "commitOid": "a" * 40})
        return httpx2.Response(404, json={"error": f"unexpected request {request.method} {path}"})

    @contextlib.contextmanager
    def installed(self):
        previous = hf_http._GLOBAL_CLIENT_FACTORY
        huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(self.handle)))
        try:
            yield self
        finally:
            huggingface_hub.set_client_factory(previous)


def test_push_to_hub_uploads_checkpoint_processor_and_card(workdir, tmp_path):
    model = make_model(workdir)
    dataset = load_manifest(workdir / "train.jsonl").select(range(4))
    args = training_args(tmp_path / "run", max_steps=2, hub_model_id="me/frames2lora-tiny")
    trainer = HyperLoraTrainer(model, args, train_dataset=dataset, eval_dataset=dataset.select(range(2)))
    trainer.train()
    trainer.evaluate()

    hub = FakeHub()
    with hub.installed():
        trainer.push_to_hub(dataset_name="me/tiny-clips", token="hf_fake")

    assert hub.created == ["me/frames2lora-tiny"] and len(hub.commits) == 1
    uploaded = hub.commits[0]
    assert sorted(uploaded) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
        "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    output_dir = Path(trainer.args.output_dir)
    for name, content in uploaded.items():
        assert content == (output_dir / name).read_bytes(), name
    weights = safetensors_load(uploaded["adapter_model.safetensors"])
    assert weights and all(key.startswith("base_model.hypernetworks.") for key in weights)
    assert json.loads(uploaded["adapter_config.json"])["peft_type"] == "HYPERLORA"
    assert hub.validated and "library_name: peft" in hub.validated[0]

    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.library_name == "peft"
    assert card.data.base_model == str(workdir / "tiny-smolvlm")
    assert card.data.tags == ["frames2lora", "video-text-to-text"]
    assert card.data.pipeline_tag == "video-text-to-text"
    assert card.data.datasets == ["me/tiny-clips"]
    assert "# frames2lora-tiny" in card.text
    assert "4 training rows" in card.text and "Task types: caption (4)" in card.text
    assert "| train_loss |" in card.text and "| eval_loss |" in card.text and "| eval_ce |" in card.text
    assert 'AutoPeftModel.from_pretrained("me/frames2lora-tiny")' in card.text
    assert "- objective: `ce`" in card.text


# ---------------------------------------------------------------------------------------------------------- teacher
def test_cache_teacher_targets_resumes(workdir, tmp_path):
    model = make_model(workdir)
    rows = load_manifest(workdir / "train.jsonl").select(range(4)).to_list()
    rows.insert(2, {**rows[0], "id": "broken", "video": str(tmp_path / "missing.mp4")})
    dataset = Dataset.from_list(rows)
    cache = tmp_path / "cache"
    first = cache_teacher_targets(model, dataset, max_new_tokens=3, cache_dir=cache, batch_size=2, progress=False)
    assert first["id"] == ["clip0", "clip1", "clip2", "clip3"]  # the unreadable row is skipped
    assert first["reference_target"] == [r["target"] for r in rows if r["id"] != "broken"]
    assert all(isinstance(t, str) for t in first["target"])
    assert len(sorted((cache / "shards").glob("shard-*.jsonl"))) == 3
    assert (cache / "dataset").is_dir()

    # Lose the last shard (as if interrupted): a rerun regenerates that batch only.
    sorted((cache / "shards").glob("shard-*.jsonl"))[-1].unlink()
    vlm = model.base_model.model
    with mock.patch.object(vlm, "generate", wraps=vlm.generate) as generate:
        second = cache_teacher_targets(model, dataset, max_new_tokens=3, cache_dir=cache, batch_size=2, progress=False)
    assert generate.call_count == 1
    assert second["target"] == first["target"]
    with pytest.raises(ValueError, match="another dataset or setting"):
        cache_teacher_targets(model, dataset, max_new_tokens=5, cache_dir=cache, progress=False)


def test_loss_weight_column_weights_rows_in_the_loss(workdir, tmp_path):
    model = make_model(workdir)
    for name, param in model.named_parameters():
        if name.endswith("scale_b"):  # non-zero adapters, so rows about different videos have different losses
            param.data.fill_(1.0)
    rows = [dict(row) for row in load_manifest(workdir / "train.jsonl").select(range(2))]
    trainer = HyperLoraTrainer(model, training_args(tmp_path), objective="ce+kl")
    model.train()

    def loss(batch_rows: list[dict], weights: list[float] | None = None) -> float:
        if weights is not None:
            batch_rows = [{**row, "loss_weight": w} for row, w in zip(batch_rows, weights, strict=True)]
        with torch.no_grad():
            return trainer.compute_loss(model, dict(trainer.data_collator(batch_rows))).item()

    alone = [loss([row]) for row in rows]
    assert loss(rows, [1.0, 0.0]) == pytest.approx(alone[0], rel=1e-5)
    assert loss(rows, [0.0, 3.0]) == pytest.approx(alone[1], rel=1e-5)
    assert loss(rows, [2.0, 2.0]) == pytest.approx(loss(rows), rel=1e-6)  # only relative weights matter
    assert loss(rows, [0.0, 0.0]) == 0.0
    assert loss(rows, [1.0, 0.0]) != pytest.approx(loss(rows, [0.0, 1.0]), rel=1e-3)

    bad = [{**rows[0], "id": "heavy", "loss_weight": float("nan")}, rows[1]]
    batch = trainer.data_collator(bad)  # the bad row is skipped and counted; the other one trains
    assert batch["num_skipped"] == 1 and batch["loss_weights"].tolist() == [1.0]
    strict = VideoTextCollator.from_model(model, on_bad_row="raise")
    with pytest.raises(peft_hyper.PeftHyperError, match="Row heavy: 'loss_weight' must be a finite number >= 0"):
        strict(bad)
    with pytest.raises(DatasetValidationError, match="'loss_weight' must hold numbers"):
        validate_dataset(Dataset.from_list([{**rows[0], "loss_weight": "high"}]))

    # The model card states the mean weight per task type, or over all rows when there is no task_type column.
    untyped = [{k: v for k, v in row.items() if k != "task_type"} for row in rows * 2]
    weighted = [{**row, "loss_weight": w} for row, w in zip(untyped, [1.0, 3.0, 2.0, 2.0], strict=True)]
    typed = [
        {**row, "task_type": t} for row, t in zip(weighted, ["motion", "caption", "motion", "caption"], strict=True)
    ]
    for dataset_rows, line in [
        (weighted, "Loss weight per row (mean): all rows 2."),
        (typed, "Loss weight per row (mean): caption 2.5, motion 1.5."),
    ]:
        args = training_args(tmp_path / "card", max_steps=1)
        card = HyperLoraTrainer(model, args, train_dataset=Dataset.from_list(dataset_rows)).create_model_card()
        assert line in card
    assert "Task types: caption (2), motion (2)." in card
