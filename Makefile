# Two commands do all the set-up: `make demo` and `make test` (each creates .venv first if needed).
PY := .venv/bin/python
SETUP := .venv/.masklab-stamp

.PHONY: demo test test-fast test-min lint bench env notebook clean

$(SETUP): pyproject.toml scripts/setup-env.sh
	bash scripts/setup-env.sh

env: $(SETUP)

# The main job on the embedded default: generate 16 digits masks, then analyse them.
demo: $(SETUP)
	bash scripts/demo.sh

# The tests run in as many pytest-xdist workers as there are cores (at most 4), a test file per unit of work
# (`--dist loadfile`: a module's fixtures are made once, and the SLURM tests, which share a one-node cluster,
# never run beside each other). Much of the suite waits on subprocesses, SLURM jobs and Dask clusters; the
# SLURM file goes first (tests/conftest.py), so that its waits overlap the rest. The 15 slowest tests are listed
# at the end (where CI time goes).
PYTEST := $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile --durations=15

test: $(SETUP)
	$(PYTEST)

# The inner loop: the tests not marked `slow` (under 2 minutes on 2 idle cores); `make test` runs them all.
test-fast: $(SETUP)
	$(PYTEST) -m "not slow"

# The suite against the dependency floors of pyproject.toml, in a second venv (.venv-min; not CI).
test-min:
	bash scripts/test-min.sh

lint: $(SETUP)
	.venv/bin/ruff check .
	$(PY) -m mypy

bench: $(SETUP)
	$(PY) bench/run_all.py

# JupyterLab on examples/, from .venv: installs the `notebook` extra first (once; CI never pays for it).
notebook: $(SETUP)
	bash scripts/setup-env.sh --notebook
	.venv/bin/jupyter lab examples/

# Removes .venv and what runs/ and figures/ hold that git does not track: the committed study
# (figures/README.md, figures/fashion-mnist/) stays. Outside a git checkout, everything but those goes.
clean:
	rm -rf .venv .venv-min
	@if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$$(pwd -P)" ]; then \
	  echo "git clean -fdx -- runs figures"; git clean -fdx -- runs figures; \
	else \
	  echo "find runs figures -mindepth 1 -maxdepth 1 (all but .gitkeep, README.md, fashion-mnist) -exec rm -rf"; \
	  find runs figures -mindepth 1 -maxdepth 1 ! -name .gitkeep ! -name README.md ! -name fashion-mnist \
	    -exec rm -rf {} +; \
	fi
