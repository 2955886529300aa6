# Two commands do all the set-up on a fresh machine:
#   make run    install, then train and evaluate the tutorial's model (train_minimal.py)
#   make test   install, then run the test suite
# TORCH_SPEC pins the CPU build this project is tested with; on a GPU machine,
# `make install TORCH_SPEC=torch` lets pip pick the build for your CUDA.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: install run check test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: install
	$(PY) train_minimal.py --epochs 10 --use-flow

# The checks that catch drift, in seconds: the import layering of ARCHITECTURE.md,
# lint (src/vlae, tests, bench, tools), format and types of src/vlae (settings in pyproject.toml), and the house's size rule
# (tools/check_sizes.py: functions <= 80 lines, modules <= 600).
check: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check src/vlae tests bench tools
	$(VENV)/bin/ruff format --check src/vlae
	$(VENV)/bin/mypy src/vlae
	$(PY) tools/check_sizes.py

# Two pytest workers with one torch thread each use both cores without oversubscription.
test: check
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
