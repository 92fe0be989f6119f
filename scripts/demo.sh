#!/usr/bin/env bash
# The main job on the embedded default (digits): generate masks, then look at them.
# Options are passed to `masklab generate`, e.g. `bash scripts/demo.sh --masks 4 --epochs 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
masklab() { .venv/bin/python -m masklab "$@"; }

# 1. Train the masks; the banner goes to the terminal, the last line of stdout is the run directory.
run=$(masklab generate "$@" | tee /dev/stderr | tail -n 1)

# 2. The run: config, one row per mask, the layer layout.
masklab show "$run"

# 3. Analyses and figures (`masklab analyze "$run"`) go here.
