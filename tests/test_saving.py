"""Crash-safe saving (`peft_hyper.saving`): a save killed at any point leaves the old complete directory or file, or
nothing, and the next save cleans what the killed one left. The kill tests SIGKILL a real subprocess mid-save."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import small_config

from peft_hyper import saving
from peft_hyper.errors import OutputPathError, PeftHyperError
from peft_hyper.model_card import write_default_model_card
from peft_hyper.saving import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
    final_path,
    remove_stale,
    staged_files,
)

SRC = Path(saving.__file__).resolve().parents[1]

# The child imports `peft_hyper.saving` without the package's __init__ (torch, transformers: seconds on 2 cores), then
# writes version `argv[2]` of directory `argv[1]`: 40 files of 64 KiB, 20 ms apart, and a `VERSION` file last.
# `argv[3]` is touched when it is time to kill it: in the body after 10 files, or during the swap (`argv[4] == "swap"`:
# without renameat2, right after the old directory was renamed aside).
CHILD = textwrap.dedent(
    """
    import os, sys, time, types
    from pathlib import Path
    package = types.ModuleType("peft_hyper")
    package.__path__ = [sys.argv[5]]
    sys.modules["peft_hyper"] = package
    from peft_hyper import saving

    target, version, ready, where = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    if where == "swap":
        saving._exchange = lambda a, b: False
        rename = os.rename
        def rename_then_hang(src, dst):
            rename(src, dst)
            if ".old-" in os.fspath(dst):
                ready.touch()
                time.sleep(600)
        os.rename = rename_then_hang
    with saving.atomic_directory(target) as staging:
        for i in range(40):
            (staging / f"part-{i:02d}.bin").write_bytes(version.encode() * 65536)
            if where == "body" and i == 10:
                ready.touch()
            time.sleep(0.02)
        (staging / "VERSION").write_text(version)
    """
)


def write_version(target: Path, version: str) -> None:
    """What the child writes, in this process."""
    with atomic_directory(target) as staging:
        for i in range(40):
            (staging / f"part-{i:02d}.bin").write_bytes(version.encode() * 65536)
        (staging / "VERSION").write_text(version)


def assert_complete(target: Path, version: str) -> None:
    assert (target / "VERSION").read_text() == version
    parts = sorted(target.glob("part-*.bin"))
    assert len(parts) == 40 and all(p.read_bytes() == version.encode() * 65536 for p in parts)


def litter(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if ".partial-" in n or ".old-" in n or n.startswith(".tmp"))


def kill_child_mid_save(target: Path, version: str, where: str, tmp_path: Path) -> None:
    ready = tmp_path / f"ready-{version}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), version, str(ready), where, str(SRC / "peft_hyper")],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the save ended before it could be killed:\n{err}"


# ---------------------------------------------------------------------------------------------------------- directories
def test_atomic_directory_creates_then_replaces_wholesale(tmp_path):
    target = tmp_path / "nested" / "adapter"
    write_version(target, "a")
    assert_complete(target, "a")
    (target / "only-in-a.txt").write_text("gone after the next save")
    write_version(target, "b")
    assert_complete(target, "b")
    assert not (target / "only-in-a.txt").exists()
    assert litter(target.parent) == []


def test_atomic_directory_without_renameat2_swaps_by_two_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(saving, "_exchange", lambda a, b: False)
    target = tmp_path / "adapter"
    write_version(target, "a")
    write_version(target, "b")
    assert_complete(target, "b")
    assert litter(tmp_path) == []


def test_atomic_directory_keeps_the_old_directory_when_the_body_raises(tmp_path):
    target = tmp_path / "adapter"
    write_version(target, "a")
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target) as staging:
        (staging / "VERSION").write_text("b")
        raise RuntimeError("boom")
    assert_complete(target, "a")
    assert litter(tmp_path) == []

    with pytest.raises(RuntimeError, match="boom"), atomic_directory(tmp_path / "new") as staging:
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    assert litter(tmp_path) == []


def test_final_path_maps_a_staging_directory_to_its_destination(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".adapter.partial-")
        assert final_path(staging) == target
        assert final_path(staging / "README.md") == target / "README.md"
    assert final_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"


@pytest.mark.parametrize("old", [None, "a"], ids=["new-directory", "existing-directory"])
def test_sigkill_while_writing_leaves_the_old_directory_or_nothing(tmp_path, old):
    target = tmp_path / "adapter"
    if old:
        write_version(target, old)
    kill_child_mid_save(target, "b", "body", tmp_path)
    if old:
        assert_complete(target, old)
    else:
        assert not target.exists()
    assert len(litter(tmp_path)) == 1  # the killed child's staging directory

    write_version(tmp_path / "another", "c")  # the next save into the same parent cleans it
    assert litter(tmp_path) == []
    if old:
        assert_complete(target, old)


def test_sigkill_between_the_two_renames_is_recovered_by_the_next_save(tmp_path):
    target = tmp_path / "adapter"
    write_version(target, "a")
    kill_child_mid_save(target, "b", "swap", tmp_path)
    assert not target.exists()  # the microseconds window, held open
    assert any(".adapter.old-" in n for n in litter(tmp_path))

    assert remove_stale(tmp_path)  # what the next save into the parent runs first
    assert_complete(target, "a")
    assert litter(tmp_path) == []


def test_live_saves_of_other_processes_are_left_alone(tmp_path):
    alive = tmp_path / f".adapter.partial-{os.getppid()}-{saving._owner_tag()}-0123abcd"
    other_machine = tmp_path / f".adapter.partial-{dead_pid()}-ffffffff-0123abcd"
    alive.mkdir()
    other_machine.mkdir()
    dead = tmp_path / f".adapter.partial-{dead_pid()}-{saving._owner_tag()}-0123abcd"
    dead.mkdir()
    (dead / "part.bin").write_bytes(b"x")
    assert remove_stale(tmp_path) == [dead]
    assert alive.is_dir() and other_machine.is_dir()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------------------- refusals
def test_atomic_directory_refuses_a_file_path(tmp_path):
    (tmp_path / "adapter").write_text("not a directory")
    with pytest.raises(OutputPathError, match="is a file, not a directory"), atomic_directory(tmp_path / "adapter"):
        pass
    with pytest.raises(OutputPathError, match="is a file"), atomic_directory(tmp_path / "adapter" / "sub"):
        pass
    assert (tmp_path / "adapter").read_text() == "not a directory"
    assert issubclass(OutputPathError, PeftHyperError) and issubclass(OutputPathError, OSError)


def test_atomic_directory_refuses_existing_with_overwrite_false_and_the_working_directory(tmp_path, monkeypatch):
    write_version(tmp_path / "adapter", "a")
    with (
        pytest.raises(OutputPathError, match="already exists"),
        atomic_directory(tmp_path / "adapter", overwrite=False),
    ):
        pass
    monkeypatch.chdir(tmp_path / "adapter")
    for path in (".", tmp_path):
        with pytest.raises(OutputPathError, match="Refusing to replace"), atomic_directory(path):
            pass
    assert_complete(tmp_path / "adapter", "a")


def test_a_non_writable_parent_is_refused(tmp_path, monkeypatch):
    parent = tmp_path / "read-only"
    parent.mkdir()
    if os.geteuid() != 0:
        parent.chmod(0o500)
    else:  # root writes through any mode bits: simulate what the kernel says to others, at both checks
        monkeypatch.setattr(saving.os, "access", lambda path, mode: Path(path) != parent)
    with pytest.raises(OutputPathError, match="Cannot write into .*read-only"), atomic_directory(parent / "adapter"):
        pass
    with pytest.raises(OutputPathError, match="Cannot write into"):
        atomic_write_text(parent / "x.json", "{}")
    if os.geteuid() == 0:
        monkeypatch.undo()
        real_mkdir = os.mkdir

        def mkdir_denied(path, mode=0o777, **kwargs):
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, mode, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir_denied)
        with pytest.raises(OutputPathError, match="Permission denied"), atomic_directory(parent / "adapter"):
            pass
    assert os.listdir(parent) == []


# ---------------------------------------------------------------------------------------------------------- files
def test_atomic_write_replaces_the_file_keeping_its_mode(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write_text(path, json.dumps({"a": 1}))
    path.chmod(0o640)
    atomic_write_bytes(path, b'{"a": 2}')
    assert json.loads(path.read_text()) == {"a": 2}
    assert path.stat().st_mode & 0o777 == 0o640
    assert litter(tmp_path) == []
    with pytest.raises(OutputPathError, match="is a directory"):
        atomic_write_text(tmp_path, "x")


def test_a_failed_file_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    atomic_write_text(path, "old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saving.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert litter(tmp_path) == []


def test_a_killed_file_write_is_cleaned_by_the_next_write_into_its_directory(tmp_path):
    leftover = tmp_path / f".meta.json.partial-{dead_pid()}-{saving._owner_tag()}-0123abcd"
    leftover.write_bytes(b"\0" * 4096)
    atomic_write_text(tmp_path / "shard-000.jsonl", "{}\n", clean=False)
    assert leftover.exists()  # clean=False: the caller runs remove_stale once before a loop of writes
    atomic_write_text(tmp_path / "meta.json", "{}")
    assert litter(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------- staged files
def test_staged_files_moves_the_weights_in_last_and_keeps_other_content(tmp_path, monkeypatch):
    out = tmp_path / "output"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "adapter_model.safetensors").write_bytes(b"old weights")
    (out / "adapter_config.json").write_text("old config")
    (out / "README.md").write_text("card")
    moves = []
    replace = os.replace

    def recording_replace(src, dst):
        moves.append((Path(dst).name, (out / "adapter_model.safetensors").exists()))
        replace(src, dst)

    monkeypatch.setattr(saving.os, "replace", recording_replace)
    with staged_files(out, commit_last=["adapter_model.safetensors"], carry=["README.md"]) as staging:
        assert final_path(staging) == out
        assert (staging / "README.md").read_text() == "card"
        (staging / "README.md").write_text("card, updated")
        (staging / "adapter_model.safetensors").write_bytes(b"new weights")
        (staging / "adapter_config.json").write_text("new config")
    assert moves[-1] == ("adapter_model.safetensors", False)
    assert all(not weights_present for _, weights_present in moves)  # the old weights went first
    assert (out / "adapter_model.safetensors").read_bytes() == b"new weights"
    assert (out / "adapter_config.json").read_text() == "new config"
    assert (out / "README.md").read_text() == "card, updated"
    assert (out / "checkpoint-2").is_dir()
    assert litter(out) == []

    with pytest.raises(RuntimeError), staged_files(out, commit_last=["adapter_model.safetensors"]) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"half")
        raise RuntimeError
    assert (out / "adapter_model.safetensors").read_bytes() == b"new weights"
    assert litter(out) == []


# ---------------------------------------------------------------------------------------------------------- model card
PEFT_STUB = "---\nlibrary_name: peft\ntags:\n- transformers\n---\n### Framework versions\n\n- PEFT 0.21.2"


@pytest.mark.parametrize(
    "text", ["", " \n\n", "---\nlibrary_name: peft\n---\n", PEFT_STUB], ids=["empty", "blank", "metadata", "peft-stub"]
)
def test_an_emptied_readme_is_replaced_by_the_frames2lora_card(tmp_path, text):
    target = tmp_path / "my-adapter"
    target.mkdir()
    (target / "README.md").write_text(text)
    write_default_model_card(target, small_config())
    card = (target / "README.md").read_text()
    assert "frames2lora" in card and "my-adapter" in card
    assert litter(target) == []


def test_a_handwritten_card_is_kept_and_a_staged_card_is_named_after_the_destination(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("# My own notes\n")
    write_default_model_card(tmp_path / "mine", small_config())
    assert (tmp_path / "mine" / "README.md").read_text() == "# My own notes\n"

    with atomic_directory(tmp_path / "clip-adapter") as staging:
        write_default_model_card(staging, small_config())
    card = (tmp_path / "clip-adapter" / "README.md").read_text()
    assert "clip-adapter" in card and ".partial-" not in card


# ---------------------------------------------------------------------------------------------------------- trainer
def test_trainer_save_model_stages_into_the_output_directory(tmp_path, hyper_model, tiny_base_dir):
    from transformers import AutoProcessor, TrainingArguments

    from peft_hyper import HyperLoraTrainer

    out = tmp_path / "run"
    out.mkdir()
    (out / "README.md").write_text("")  # what a killed in-place card write used to leave
    (out / "adapter_model.safetensors").write_bytes(b"")
    leftover = out / f".run.partial-{dead_pid()}-{saving._owner_tag()}-0123abcd"
    leftover.mkdir()
    hyper_model.set_processor(AutoProcessor.from_pretrained(tiny_base_dir))
    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
    HyperLoraTrainer(hyper_model, args).save_model()

    from safetensors.torch import load_file

    assert load_file(out / "adapter_model.safetensors")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "HYPERLORA"
    card = (out / "README.md").read_text()
    assert "frames2lora" in card and "# run" in card
    assert litter(out) == []


def test_saved_files_get_the_umask_mode_whatever_the_writer_chose(tmp_path):
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "adapter") as staging:
            save_file({"w": torch.zeros(2)}, staging / "adapter_model.safetensors")
            (staging / "private.txt").write_text("x")
            os.chmod(staging / "private.txt", 0o600)
        with staged_files(tmp_path / "run") as staging:
            save_file({"w": torch.zeros(2)}, staging / "model.safetensors")
    finally:
        os.umask(old)
    for path in (tmp_path / "adapter" / "adapter_model.safetensors", tmp_path / "adapter" / "private.txt",
                 tmp_path / "run" / "model.safetensors"):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_model.safetensors", "private.txt"]
