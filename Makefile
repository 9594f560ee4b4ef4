# Two commands set everything up on a fresh machine with Python 3.11+ and make:
#   make run   - create .venv, install, run the main job (clustermass run on the embedded synthetic box)
#   make test  - create/refresh .venv with the test extras and run the test suite
# Both are idempotent: the install step re-runs only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PIPFLAGS ?= --disable-pip-version-check --no-input -q
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test install install-test lint bench clean

run: $(VENV)/.installed-run
	$(BIN)/clustermass run $(RUN_ARGS)

# Two pytest-xdist workers (each a session of its own, tests/conftest.py), whole modules at a time in the order
# conftest sets (slowest first), so that module fixtures are built once; the 25 slowest tests are listed at the end.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

install: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: clustermass needs Python 3.11+, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install $(PIPFLAGS) -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run
	$(PIP) install $(PIPFLAGS) -c constraints.txt -e '.[test]'
	@touch $@

# tests/test_slurm.py against the SLURM running here, failing (not skipping) when there is none: start a single-node
# SLURM on this machine first with `sudo .ci/slurm-setup.sh`. About 4 minutes on 2 cores; stopped after 20.
SLURM_TEST_TIMEOUT ?= 1200
.PHONY: test-slurm
test-slurm: $(VENV)/.installed-test
	CLUSTERMASS_REQUIRE_SLURM=1 timeout -s INT -k 60 $(SLURM_TEST_TIMEOUT) \
		$(BIN)/python -m pytest tests/test_slurm.py $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

BENCH_BOX ?= .cache/bench-box

# Every benchmark of README's Performance section, on this machine (about 10 minutes on 2 cores, ~10 GB of disk).
bench: $(VENV)/.installed-run
	$(BIN)/python bench/bench_synth.py --box-size 1000 --out $(BENCH_BOX)
	$(BIN)/python bench/bench_ingest.py --file $(BENCH_BOX)/galaxies.h5
	$(BIN)/python bench/bench_observe.py --box $(BENCH_BOX)
	$(BIN)/python bench/bench_train.py --convergence 300000
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_catalogs.py
	$(BIN)/python bench/bench_run.py

clean:
	rm -rf $(VENV) runs .cache .pytest_cache
