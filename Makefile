# Two commands do all the set-up: `make demo` and `make test` (each creates .venv first if needed).
PY := .venv/bin/python
SETUP := .venv/.masklab-stamp

.PHONY: demo test lint bench env clean

$(SETUP): pyproject.toml scripts/setup-env.sh
	bash scripts/setup-env.sh

env: $(SETUP)

# The main job on the embedded default: generate 16 digits masks, then analyse them.
demo: $(SETUP)
	bash scripts/demo.sh

test: $(SETUP)
	$(PY) -m pytest -q

lint: $(SETUP)
	.venv/bin/ruff check .

bench: $(SETUP)
	$(PY) bench/run_all.py

clean:
	rm -rf .venv runs/* figures/*
