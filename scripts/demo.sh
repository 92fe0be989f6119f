#!/usr/bin/env bash
# The main job on the embedded default (digits): generate masks, then analyse them.
# Options are passed to `masklab generate`, e.g. `bash scripts/demo.sh --masks 4 --epochs 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
masklab() { .venv/bin/masklab "$@"; }
start=$(date +%s)

# 1. Train the masks (or reuse the finished run); the last line of stdout is the run directory.
run=$(masklab generate --resume "$@" | tee /dev/stderr | tail -n 1)
trained=$(date +%s)

# 2. Distances vs chance, consensus, clustering, UMAP, interpolation barriers: tables + figures.
index=$(masklab analyze "$run" | tee /dev/stderr | tail -n 1)
done=$(date +%s)

echo
echo "generate: $((trained - start)) s, analyze: $((done - trained)) s"
echo "run:     $run"
echo "figures: $index"
