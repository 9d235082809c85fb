"""Crash-safe saving: a process killed at any moment (SIGKILL, OOM killer, preemption) leaves either the old complete
version of what it was saving or the new complete one — never a half-written file — and no litter that the next save
does not clean up.

- [`atomic_directory`]: build a whole directory (an adapter, a dataset) in a hidden staging directory beside it, then
  swap it into place.
- [`staged_files`]: write a set of files into a directory that also holds other things (`Trainer.output_dir` holds
  checkpoints and logs); the file that makes the set loadable (the weights) goes in last.
- [`atomic_write_bytes`] / [`atomic_write_text`]: one file, through a hidden temporary file and `os.replace`.

Everything is staged in the destination's own parent directory (so on the same filesystem, where a rename is atomic)
under hidden names: `.<name>.partial-<pid>-<owner>-<random>` while being written, `.<name>.old-<pid>-<owner>-<random>`
for a directory being replaced. `<owner>` tags the machine and PID namespace, so that a save on a shared filesystem
never mistakes another machine's live save for a dead one. Each save first removes from its directory the staging
entries of processes that are no longer alive (and restores a replaced directory that a kill left aside with nothing
in its place); [`remove_stale`] does it on demand, e.g. before reading a directory that may hold such leftovers.

Everything written is fsynced before it is renamed into place, and the directory after, so the guarantees also hold
across a power loss on filesystems that honour fsync. Liveness checks use `os.kill(pid, 0)`; on Windows, where that
would end the process, leftovers are never removed automatically.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import OutputPathError

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "final_path",
    "fsync_tree",
    "remove_stale",
    "staged_files",
]

_STAGING_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-(?P<owner>[0-9a-f]{8})-(?P<token>[0-9a-f]{8})$"
)
# staging directory → the path its content is committed to, for `final_path` (this process's live saves only)
_DESTINATIONS: dict[Path, Path] = {}


# ---------------------------------------------------------------------------------------------------------- public API
@contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Write the directory `path` all at once: yield an empty staging directory to write into; on a clean exit it
    replaces `path` (created if missing; an existing directory is replaced wholesale, files the new save does not
    write included).

    ```python
    with atomic_directory("adapters/clip0") as staging:
        save_file(state_dict, staging / "adapter_model.safetensors")
        config.save_pretrained(staging)
    ```

    What a kill leaves at `path`:

    - while the body writes (staging `.<name>.partial-…` beside `path`): the old directory, complete, or nothing if
      there was none;
    - during the swap, on Linux filesystems with `renameat2(RENAME_EXCHANGE)` (ext4, xfs, btrfs, tmpfs): the old or
      the new directory, exchanged in one atomic step;
    - during the swap elsewhere (NFS, macOS): the old directory, then — between two renames, microseconds — nothing
      at `path` with the old one complete aside (`.<name>.old-…`), then the new directory. The next save into the
      same parent (or [`remove_stale`]) moves an aside directory back when nothing took its place.

    An exception in the body (or in the swap) removes the staging directory and leaves `path` untouched. A symlink at
    `path` is followed: the directory it points to is replaced and the link kept.

    Args:
        path: the directory to write. Its parent is created if needed.
        overwrite: replace an existing directory (default); `False` refuses one with [`OutputPathError`].

    Raises:
        OutputPathError: `path` is a file, or exists and `overwrite=False`, or is a directory that must not be
            replaced wholesale (the root, a mount point, the home or working directory or one holding it), or its
            parent cannot be created or written.
    """
    target = _resolve(path)
    if os.path.lexists(target):
        if not target.is_dir():
            raise OutputPathError(f"{target} is a file, not a directory; remove it or choose another output path.")
        if not overwrite:
            raise OutputPathError(f"{target} already exists; remove it, choose another path or pass overwrite=True.")
        _refuse_wholesale_replacement(target)
    _writable_directory(target.parent)
    remove_stale(target.parent)
    staging = _make_staging_dir(target.parent, target.name)
    _DESTINATIONS[staging] = target
    try:
        if target.is_dir():  # the new directory keeps the old one's permission bits
            os.chmod(staging, stat.S_IMODE(target.stat().st_mode))
        yield staging
        _give_files_the_umask_mode(staging)
        fsync_tree(staging)
        _swap_in(staging, target)
    except BaseException:
        _remove(staging)  # the unfinished new directory — or, after an exchange, the replaced old one
        raise
    finally:
        _DESTINATIONS.pop(staging, None)


@contextmanager
def staged_files(
    directory: str | os.PathLike, *, commit_last: Iterable[str] = (), carry: Iterable[str] = ()
) -> Iterator[Path]:
    """Write a set of files into `directory`, which may hold other things that stay: yield a hidden staging directory
    inside it to write into; on a clean exit move each staged entry into `directory` (replacing same-named ones), the
    `commit_last` names last.

    `commit_last` are the files whose presence makes the set usable (a model's weights). Before anything moves, every
    `commit_last` name in `directory` is removed, so what a kill leaves in `directory` is:

    - before that: the old set, unchanged;
    - after it, until the last `commit_last` file is in: no `commit_last` file — the set is absent, not loadable (other
      files may already be new);
    - after: the new set, complete.

    `carry`: names of existing files copied into the staging directory first, for writers that update a file rather
    than create it (PEFT's `save_pretrained` updates `README.md`). An exception in the body removes the staging
    directory and leaves `directory` untouched.

    Raises:
        OutputPathError: `directory` is a file, or cannot be created or written.
    """
    target = _resolve(directory)
    if os.path.lexists(target) and not target.is_dir():
        raise OutputPathError(f"{target} is a file, not a directory; remove it or choose another output path.")
    _writable_directory(target)
    remove_stale(target)
    staging = _make_staging_dir(target, target.name)
    _DESTINATIONS[staging] = target
    commit_last = list(dict.fromkeys(commit_last))
    try:
        for name in carry:
            if (target / name).is_file():
                shutil.copy2(target / name, staging / name)
        yield staging
        _give_files_the_umask_mode(staging)
        fsync_tree(staging)
        for name in commit_last:
            _remove(target / name)
        _fsync_dir(target)
        staged = sorted(os.listdir(staging))
        for name in [n for n in staged if n not in commit_last] + [n for n in commit_last if n in staged]:
            _move_in(staging / name, target / name)
        _fsync_dir(target)
    finally:
        _remove(staging)  # empty after a clean exit
        _DESTINATIONS.pop(staging, None)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, clean: bool = True) -> Path:
    """Write `data` to the file `path` atomically: a kill leaves the old file or the new one, never a partial one.

    The data goes to a hidden `.<name>.partial-…` file beside `path`, is fsynced, then renamed over `path` (which keeps
    an existing file's permission bits). `clean=False` skips the scan for dead processes' leftovers in the directory
    (for a loop writing many files into one directory: call [`remove_stale`] once before it). Returns the path written.

    Raises:
        OutputPathError: `path` is a directory, or its parent cannot be created or written.
    """
    target = _resolve(path)
    if target.is_dir():
        raise OutputPathError(f"{target} is a directory, not a file; choose another output path.")
    _writable_directory(target.parent)
    if clean:
        remove_stale(target.parent)
    tmp, fd = _make_staging_file(target.parent, target.name)
    try:
        with os.fdopen(fd, "wb") as f:
            if os.chmod in os.supports_fd:
                with suppress(FileNotFoundError):  # keep an existing file's permission bits
                    os.chmod(f.fileno(), stat.S_IMODE(os.stat(target).st_mode))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", clean: bool = True) -> Path:
    """[`atomic_write_bytes`] of `text` encoded with `encoding` (newlines written as they are)."""
    return atomic_write_bytes(path, text.encode(encoding), clean=clean)


def remove_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove from the directory `parent` the staging entries of saves whose process is no longer alive (on this
    machine and PID namespace), and move back an aside directory whose target a kill left missing. Returns the paths
    removed. Entries of live processes, of other machines and anything not named like a staging entry are left alone.
    """
    try:
        names = os.listdir(parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    owner = _owner_tag()
    removed = []
    for name in names:
        match = _STAGING_NAME.match(name)
        if match is None or match["owner"] != owner or _pid_alive(int(match["pid"])):
            continue
        path = Path(parent, name)
        target = Path(parent, match["name"])
        if match["kind"] == "old" and not os.path.lexists(target):
            try:
                os.rename(path, target)
                logger.warning(f"Restored {target} from {path}, left aside by a save that was killed.")
            except OSError as exc:  # keep the only copy
                logger.warning(f"Could not restore {target} from {path} ({exc}); move it back by hand.")
            continue
        logger.info(f"Removing {path}, left by a save that was killed.")
        _remove(path)
        removed.append(path)
    return removed


def final_path(path: str | os.PathLike) -> Path:
    """The path that `path` will have once the save writing it is committed: for a staging directory yielded by
    [`atomic_directory`] or [`staged_files`] in this process (or a path inside one), its destination; otherwise `path`.

    For writers that name things after their directory (a model card's title).
    """
    resolved = Path(os.path.realpath(path))
    for candidate in (resolved, *resolved.parents):
        if candidate in _DESTINATIONS:
            return _DESTINATIONS[candidate] / resolved.relative_to(candidate)
    return Path(path)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every regular file under the directory `path` and every directory in it (`path` included), deepest
    first, so that its content is on disk before something that vouches for it (a rename, a completion marker)."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            file = os.path.join(root, name)
            if os.path.isfile(file) and not os.path.islink(file):
                fd = os.open(file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(root)


# ---------------------------------------------------------------------------------------------------------- helpers
def _give_files_the_umask_mode(directory: Path) -> None:
    """Give every regular file under `directory` the permission bits a new file gets from the process's umask.

    Writers differ: safetensors >= 0.8 creates its files 0600 whatever the umask (safetensors#782), so an adapter
    saved by one user could not be read by a server running as another. What we save is readable as `open()` would
    have made it. The mode is read from a probe file rather than `os.umask`, which cannot be read without being set
    (racy with other threads).
    """
    probe = directory / f".umask-probe-{secrets.token_hex(4)}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()
    for root, _, files in os.walk(directory):
        for name in files:
            file = os.path.join(root, name)
            if os.path.isfile(file) and not os.path.islink(file) and stat.S_IMODE(os.stat(file).st_mode) != mode:
                os.chmod(file, mode)


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _owner_tag() -> str:
    """8 hex digits naming this machine and PID namespace (PIDs only mean something within one)."""
    namespace = ""
    with suppress(OSError):
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    return hashlib.sha1(f"{socket.gethostname()}:{namespace}".encode()).hexdigest()[:8]


def _staging_name(name: str, kind: str) -> str:
    return f".{name}.{kind}-{os.getpid()}-{_owner_tag()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    with suppress(OSError, IndexError):  # a killed process its parent has not reaped yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _writable_directory(directory: Path) -> None:
    """Create `directory` if needed and check that entries can be created in it."""
    if os.path.lexists(directory) and not directory.is_dir():
        raise OutputPathError(f"{directory} is a file, not a directory; remove it or choose another output path.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create the directory {directory} ({exc.strerror}); choose another path."
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputPathError(_not_writable(directory))


def _not_writable(directory: Path, reason: str = "permission denied") -> str:
    return f"Cannot write into {directory} ({reason}); fix its permissions or choose another output path."


def _refuse_wholesale_replacement(target: Path) -> None:
    home = Path(os.path.realpath(os.path.expanduser("~")))
    cwd = Path(os.path.realpath(os.getcwd()))
    if target in (home, cwd) or target in cwd.parents or os.path.ismount(target):
        raise OutputPathError(
            f"Refusing to replace {target} wholesale (the root, a mount point, or the home or working directory): "
            "save into a new subdirectory of it instead."
        )


def _make_staging_dir(parent: Path, name: str) -> Path:
    while True:
        path = parent / _staging_name(name, "partial")
        try:
            path.mkdir(mode=0o777)  # the umask applies, as for any new directory
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputPathError(_not_writable(parent, exc.strerror or str(exc))) from exc


def _make_staging_file(parent: Path, name: str) -> tuple[Path, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        path = parent / _staging_name(name, "partial")
        try:
            return path, os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputPathError(_not_writable(parent, exc.strerror or str(exc))) from exc


def _remove(path: str | os.PathLike) -> None:
    """Remove a file, link or directory tree if it exists (best effort for trees)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            os.unlink(path)


def _fsync_dir(path: str | os.PathLike) -> None:
    """Persist a directory's entries (renames, removals). Best effort: not every platform can open a directory."""
    if os.name == "nt":
        return
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_in(source: Path, destination: Path) -> None:
    if source.is_dir() and not source.is_symlink() and destination.is_dir() and not destination.is_symlink():
        _swap_in(source, destination)
    else:
        os.replace(source, destination)


def _swap_in(staging: Path, target: Path) -> None:
    """Put the directory `staging` at `target` (same parent), replacing a directory there; `staging` is gone after."""
    if not os.path.lexists(target):
        os.rename(staging, target)
    elif _exchange(staging, target):  # `staging` now holds the old directory
        _fsync_dir(target.parent)
        _remove(staging)
        return
    else:
        aside = target.parent / _staging_name(target.name, "old")
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)
            raise
        _fsync_dir(target.parent)
        _remove(aside)
    _fsync_dir(target.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_EXCHANGE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


@functools.cache
def _renameat2():
    """glibc's `renameat2`, or None (not Linux, or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two existing paths with `renameat2(RENAME_EXCHANGE)`; False where that is unsupported."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
