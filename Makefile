# One task runner. `make demo` and `make test` are the README's set-up; CI runs `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo up test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build on disk, so nothing pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/canvas demo

up: install
	$(VENV)/bin/canvas up

# --durations=15: every run prints its slowest tests (the suite's target: none over 60 s). The per-test
# timeout is in pyproject.toml. Two processes (pytest-xdist), a test file each at a time: much of the suite
# waits on servers and workers, and each process has a Redis server of its own (tests/conftest.py).
# TEST_PROCESSES=0 runs in one process.
TEST_PROCESSES ?= 2
XDIST := $(if $(filter 0,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES) --dist loadfile)

test: install
	$(PY) -m pytest -q --durations=15 $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q --durations=15 $(XDIST) -m "not e2e" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf var .pytest_cache .ruff_cache
