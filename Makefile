# vicuna_sft developer commands. `make help` lists them.
# Uses the active virtualenv if there is one, else creates .venv here.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
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
# The CPU wheel comes from a local wheel directory if pip has one (offline), else PyTorch's CPU index.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_VERSION ?= 25.3
# Everything else is installed exactly as locked (requirements/cpu.lock, hashes checked); `make lock`
# re-resolves it. LOCK=requirements/oldest.lock gives the oldest supported pins instead.
LOCK ?= requirements/cpu.lock
PYTEST_ARGS ?=

.PHONY: help install lock smoke test test-oldest test-fast test-gpu lint format typecheck bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

# pip's notes about configured-but-absent local index folders (this workplace's pip.conf) are noise
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install -q "pip==$(PIP_VERSION)" $(PIP_QUIET)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK) $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps --no-index "torch==$(TORCH_VERSION)+cpu" >/dev/null 2>&1 \
	  || $(PY) -m pip install -q --no-deps "torch==$(TORCH_VERSION)+cpu" --index-url $(TORCH_INDEX) $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . $(PIP_QUIET)
	$(PY) -m pip check
	@echo "installed $(LOCK) + torch $(TORCH_VERSION)+cpu into $(VENV)"
	@echo $(LOCK) > $(STAMP)

install: $(STAMP) ## create the environment (CPU torch) and install vicuna_sft with dev tools, as locked

lock: ## re-resolve the newest releases inside pyproject's ranges into requirements/*.lock
	@command -v uv >/dev/null || { echo "make lock needs uv (pip install uv)"; exit 1; }
	bash scripts/lock.sh

smoke: $(STAMP) ## a fresh tiny fine-tune on the bundled sample (CPU, offline, < 3 min)
	rm -rf outputs/smoke
	$(PY) -m vicuna_sft experiment=smoke hydra.run.dir=outputs/smoke

test: $(STAMP) ## every CPU test, slow and multi-process ones included (what CI runs)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

# CI's second job: the oldest supported pure-Python pins (requirements/oldest.lock: transformers 5.17,
# accelerate 1.15) in their own environment; the unit tests, one 2-rank FSDP run and the GPU
# script's offline setup proven against transformers 5.17.
OLDEST_VENV ?= .venv-oldest
OLDEST_TESTS ?= tests/unit tests/integration/test_distributed.py::test_full_shard_params_are_dtensors_sharded_on_dim0 tests/integration/test_gpu_offline_setup.py
test-oldest: ## unit tests + a 2-rank FSDP run on the oldest supported pins (CI's second job)
	$(MAKE) --no-print-directory install VENV=$(OLDEST_VENV) LOCK=requirements/oldest.lock
	$(OLDEST_VENV)/bin/python -m pytest -m "not gpu" $(OLDEST_TESTS) $(PYTEST_ARGS)

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

bench: $(STAMP) ## throughput and memory benchmarks (prints ratios measured side by side), the what-fits table
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
