# `make demo` and `make test` set themselves up on a fresh machine: a .venv with the package installed,
# torch pinned by constraints.txt to the local CPU build.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck docs bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --constraint constraints.txt --editable ".[dev,demo]"
	touch $(STAMP)

setup: $(STAMP)

# OMP_WAIT_POLICY=PASSIVE: on a shared, busy CPU, spinning OpenMP threads slow torch training ten-fold or more.
demo: setup
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m lightning_sparsity.demo

test: setup
	$(PYTHON) -m pytest -q

typecheck: setup
	$(VENV)/bin/mypy

lint: setup
	$(VENV)/bin/ruff check lightning_sparsity tests benchmarks examples
	$(VENV)/bin/ruff format --check lightning_sparsity tests benchmarks examples

# quick benchmarks (< 10 min on an idle 2-core CPU), regenerating docs/benchmarks.md; the SST-2 accuracy
# study is `$(PYTHON) -m benchmarks.accuracy --full` (about 5 hours, resumable; INC from /work/inc-venv when present)
bench: setup
	$(PYTHON) -m benchmarks.step_time --rounds 2 --steps 5 --frequencies 1 10
	$(PYTHON) -m benchmarks.mask_update --rounds 1
	$(PYTHON) -m benchmarks.memory
	$(PYTHON) -m benchmarks.accuracy

# the documentation site (MkDocs + Material + mkdocstrings) into site/; --strict fails on broken references
$(VENV)/.installed-docs: $(STAMP)
	$(PYTHON) -m pip install --quiet --constraint constraints.txt --editable ".[docs]"
	touch $@

docs: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs build --strict
