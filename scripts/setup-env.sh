#!/usr/bin/env bash
# Creates .venv and installs masklab with its dev tools. Idempotent: re-running is cheap.
# `bash scripts/setup-env.sh --notebook` also installs the `notebook` extra (JupyterLab), for `make notebook`.
# PyTorch: if the environment already has torch we keep it (bring your own CUDA build). Otherwise, on a
# machine without an NVIDIA GPU we install the CPU build explicitly (pinned), so that pip does not pull a
# multi-GB CUDA build through the open `torch>=2.2` requirement. Override with MASKLAB_TORCH="torch==X".
# masklab is installed editable as a plain .pth entry for this checkout (pyproject's package-dir), so
# `import masklab` finds it from any directory, the one holding the clone included.
# Progress goes to stderr: one line per step and per package pip collects (the set-up takes minutes);
# pip's full output is in .venv/setup-pip.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
extras="dev"
stamp="$VENV/.masklab-stamp"
if [ "${1:-}" = "--notebook" ]; then
  extras="dev,notebook"
  stamp="$VENV/.masklab-notebook-stamp"
fi
start=$(date +%s)
say() { echo "setup: $* ($(( $(date +%s) - start )) s)" >&2; }
log="$VENV/setup-pip.log"
# pip install, printing one line per package it collects; its full output goes to $log (shown if it fails)
pip_install() {
  if ! "$VPY" -m pip install --progress-bar off "$@" 2>&1 | tee -a "$log" \
      | { grep --line-buffered -E '^(Collecting|Installing collected packages)' || true; } \
      | while IFS= read -r line; do echo "setup:   ${line#Collecting }" >&2; done; then
    echo "setup: pip install $* failed; the end of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: masklab needs Python >= 3.11 but $PY is $("$PY" -V 2>&1 || echo missing);" \
         "set PYTHON=python3.11 (or newer)" >&2
    exit 2
  fi
  say "creating $VENV with $("$PY" -V 2>&1)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
want=$(cat pyproject.toml scripts/setup-env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
: > "$log"
say "upgrading pip"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${MASKLAB_TORCH:-}" ]; then
    say "installing PyTorch: $MASKLAB_TORCH (from MASKLAB_TORCH)"
    pip_install "$MASKLAB_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    say "installing PyTorch with CUDA (an NVIDIA GPU was found; about 2-3 GB)"
    pip_install "torch>=2.2"
  else
    say "no NVIDIA GPU found: installing the CPU build torch==2.13.0"
    pip_install "torch==2.13.0"
  fi
else
  say "keeping the installed PyTorch $("$VPY" -c 'import torch; print(torch.__version__)')"
fi
what="numpy, scipy, scikit-learn, umap-learn, numba, pandas, pyarrow, matplotlib, pytest, ruff, mypy, submitit, dask"
[ "$extras" = dev ] || what="$what, jupyterlab"
say "installing masklab (editable, .[$extras]) and its dependencies: $what"
pip_install -e ".[$extras]"
# compile masklab's numba kernels (and umap's) into their on-disk caches now, so that the first generate and
# analyze run at full speed; a failure here is not fatal (the kernels then compile on first use)
say "warming numba's caches (masklab's kernels, umap's): about 40 s once"
"$VPY" -m masklab.warm --quiet || say "warm-up failed; kernels will compile on first use"
echo "$want" > "$stamp"
if [ "$extras" != dev ]; then  # the notebook install is a superset of the plain one
  echo "$want" > "$VENV/.masklab-stamp"
fi
say "done: $VENV is ready"
