#!/usr/bin/env bash
# Creates .venv and installs masklab with its dev tools. Idempotent: re-running is cheap.
# PyTorch: if the environment already has torch we keep it (bring your own CUDA build). Otherwise, on a
# machine without an NVIDIA GPU we install the CPU build explicitly (pinned), so that pip does not pull a
# multi-GB CUDA build through the open `torch>=2.2` requirement. Override with MASKLAB_TORCH="torch==X".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.masklab-stamp"
want=$(cat pyproject.toml scripts/setup-env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${MASKLAB_TORCH:-}" ]; then
    "$VPY" -m pip install -q "$MASKLAB_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$VPY" -m pip install -q "torch>=2.2"
  else
    echo "setup: no NVIDIA GPU found: installing the CPU build torch==2.13.0" >&2
    "$VPY" -m pip install -q "torch==2.13.0"
  fi
fi
"$VPY" -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
