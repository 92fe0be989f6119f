#!/usr/bin/env bash
# The main job on the embedded default (digits): generate masks, then analyse them.
# Options are passed to `masklab generate`, e.g. `bash scripts/demo.sh --masks 4 --epochs 5`.
# Each command's output streams to stdout as it comes and is kept in a temporary file, whose last line
# (the run directory, the index page) the next step reads. (Not `tee /dev/stderr`: that reopens the
# file stderr points at and truncates a log the user redirected, e.g. `make demo > log 2>&1`.)
# MASKLAB: the masklab command to run (default .venv/bin/masklab).
set -euo pipefail
cd "$(dirname "$0")/.."
MASKLAB=${MASKLAB:-.venv/bin/masklab}
out=$(mktemp "${TMPDIR:-/tmp}/masklab-demo.XXXXXX")
trap 'rm -f "$out"' EXIT
start=$(date +%s)

# Runs masklab with the given arguments, streaming its stdout, and sets `last` to its last line.
masklab_last_line() {
  "$MASKLAB" "$@" | tee "$out"
  last=$(tail -n 1 "$out")
  if [ -z "$last" ]; then
    echo "demo: \`masklab $1\` printed nothing" >&2
    exit 1
  fi
}

# 1. Train the masks (or reuse the finished run); the last line of stdout is the run directory.
masklab_last_line generate --resume "$@"
run=$last
trained=$(date +%s)

# 2. Distances vs chance, consensus, clustering, UMAP, interpolation barriers: tables + figures.
masklab_last_line analyze "$run"
index=$last
done=$(date +%s)

echo
echo "generate: $((trained - start)) s, analyze: $((done - trained)) s"
echo "run:     $run"
echo "figures: $index"
