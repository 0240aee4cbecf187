# vicuna_sft developer commands. `make help` lists them.
# Uses the active virtualenv if there is one, else creates .venv here.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vicuna_sft-installed
# CPU bootstrap only: a plain `torch` requirement can pull a multi-GB CUDA build. GPU machines
# bring their own torch and install with `pip install -e .[dev]` (or `.[flash]`, `.[xformers]`).
TORCH_CPU ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: help install smoke test test-fast test-gpu lint format typecheck bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create the environment (CPU torch) and install vicuna_sft with dev tools

smoke: $(STAMP) ## a fresh tiny fine-tune on the bundled sample (CPU, offline, < 3 min)
	rm -rf outputs/smoke
	$(PY) -m vicuna_sft experiment=smoke hydra.run.dir=outputs/smoke

test: $(STAMP) ## every CPU test, slow and multi-process ones included (what CI runs)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: $(STAMP) ## CPU tests without the slow end-to-end runs
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-gpu: $(STAMP) ## GPU tests (needs CUDA; skipped cleanly without it)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

typecheck: $(STAMP) ## optional mypy pass
	$(PY) -m pip install -q mypy && $(PY) -m mypy vicuna_sft --ignore-missing-imports

bench: $(STAMP) ## throughput benchmarks (prints ratios measured side by side)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
