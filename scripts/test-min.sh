#!/usr/bin/env bash
# `make test-min`: the test suite against the oldest versions pyproject.toml allows (its dependency floors).
# Builds a second environment, .venv-min, with every `>=` floor of [project] dependencies installed exactly
# (torch excepted: the CPU build torch==2.13.0, installed first and then held, so that pip never pulls a CUDA
# build), the dev tools at whatever versions fit beside them, and masklab editable; then runs pytest there.
# Not part of CI (a second install of everything takes minutes); run it when a floor changes.
# Extra arguments go to pytest, e.g. `bash scripts/test-min.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-min
TORCH=${MASKLAB_TORCH:-torch==2.13.0}
say() { echo "test-min: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PY" -V 2>&1)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
log="$VENV/pip.log"
: > "$log"
pip_install() {
  if ! "$VPY" -m pip install --progress-bar off "$@" >> "$log" 2>&1; then
    say "pip install $* failed; the end of $log:"
    tail -n 25 "$log" >&2
    exit 1
  fi
}

say "installing $TORCH"
pip_install "$TORCH"
if ! "$VPY" -W ignore -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then
  say "$TORCH is a CUDA build; install a CPU build (MASKLAB_TORCH=\"torch==X\") and rerun"
  exit 1
fi
# the floors, pinned: "numpy>=2.0" -> "numpy==2.0"; torch held at the version just installed
"$VPY" -W ignore - > "$VENV/floors.txt" <<'EOF'
import re, tomllib
import torch

print(f"torch=={torch.__version__}")
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name, floor = re.fullmatch(r"([A-Za-z0-9_.\[\]-]+)\s*>=\s*([0-9][0-9.]*)", requirement).groups()
    if name != "torch":
        print(f"{name}=={floor}")
EOF
say "installing the floors: $(grep -v '^torch' "$VENV/floors.txt" | paste -sd ' ')"
pip_install -c "$VENV/floors.txt" -e ".[dev]"
say "installed: $("$VPY" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(torch|numpy|scipy|scikit-learn|umap-learn|matplotlib|pandas|pyarrow|numba|tqdm|tomli.w)==' \
  | paste -sd ' ')"
say "running the tests"
export NUMBA_CACHE_DIR="$PWD/$VENV/numba-cache"  # the floors' numba apart from .venv's (each rewrites the other's)
exec "$VPY" -m pytest -q -p no:cacheprovider "$@"
