# `make demo` and `make test` set themselves up on a fresh machine: a .venv with the package installed,
# torch pinned by constraints.txt to the local CPU build.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the second environment: the transformers 4.x line (the package says transformers>=4.40), for the classic API
VENV4 ?= .venv-transformers4
CLASSIC_TESTS := tests/test_classic_clients.py tests/test_classic_clients_script.py tests/test_trainer.py tests/test_config.py

.PHONY: setup demo demo-from-wheel test test-transformers4 lint typecheck docs bench

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

$(VENV4)/.installed: pyproject.toml constraints.txt
	test -x $(VENV4)/bin/python || python3 -m venv $(VENV4)
	$(VENV4)/bin/python -m pip install --quiet --constraint constraints.txt "transformers>=4.57,<5" "datasets>=2.16,<4" \
		--editable ".[dev]"
	touch $@

# `pip install lightning-sparsity[demo]` then `python -m lightning_sparsity.demo` from any folder: a wheel in a
# fresh venv, the demo (shortened) run from an empty temporary folder
WHEEL_VENV ?= build/wheel-venv
demo-from-wheel: setup
	rm -rf dist $(WHEEL_VENV) && $(PYTHON) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --constraint constraints.txt "$$(ls dist/*.whl)[demo]"
	cd "$$(mktemp -d)" && OMP_WAIT_POLICY=PASSIVE $(abspath $(WHEEL_VENV))/bin/python -m lightning_sparsity.demo \
		--dense-steps 2 --prune-steps 2 --recovery-steps 1 --output-dir out && test -f out/report.md

# the classic API (NLPTrainer, PruningConfig, the GLUE script) on transformers 4.x; `make test` runs it on 5
test-transformers4: $(VENV4)/.installed
	$(VENV4)/bin/python -m pytest -q $(CLASSIC_TESTS)

lint: setup
	$(VENV)/bin/ruff check lightning_sparsity tests benchmarks examples
	$(VENV)/bin/ruff format --check lightning_sparsity tests benchmarks examples

# quick benchmarks (< 10 min on an idle 2-core CPU), regenerating docs/benchmarks.md; the SST-2 accuracy
# study is `$(PYTHON) -m benchmarks.accuracy --full` (about 5 hours, resumable; INC runs from the venv at $$INC_VENV, default /work/inc-venv, skipped with a message when absent)
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
