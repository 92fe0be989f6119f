#!/usr/bin/env bash
# The main job on the embedded default (digits): generate masks, then analyse them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m masklab.demo "$@"
