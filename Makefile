# ckptstudy: the commands a newcomer can guess. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
# the overrides of ARGS that say which suite a run reads (make run ARGS=paths.suite=... builds that one)
SUITE_ARGS = $(filter model=% model.suite.% model.path=% paths.suite=% paths.root=%,$(ARGS))

.DEFAULT_GOAL := help
.PHONY: help install run suite micro-runs test test-fast test-full bench bench-shape gpu-check lint format clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: TORCH_VERSION=$(TORCH_VERSION) (pip install torch==TORCH_VERSION first), PYTHON=$(PYTHON), ARGS='<hydra overrides for make run>'"
	@echo "  environment: CKPTSTUDY_SUITE_DIR=<dir> reads and builds the micro suite there (else ~/.cache/ckptstudy/suites/micro-<recipe hash>)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install ckptstudy with torch==TORCH_VERSION

suite: $(STAMP) ## build the micro suite once per machine (~5 min) in ~/.cache/ckptstudy/suites/ (ckptstudy-suite --where)
	$(BIN)/ckptstudy-suite $(SUITE_ARGS)

micro-runs: $(STAMP) ## build the other micro training runs (model.seed=1, 2) and micro-llama (~5 min each on 2 idle cores; not needed by run/test)
	$(BIN)/ckptstudy-suite model.seed=1
	$(BIN)/ckptstudy-suite model.seed=2
	$(BIN)/ckptstudy-suite model=micro-llama

run: suite ## default multirun sweep over the micro suite's checkpoints, then the summary, report.html and W&B trajectory runs
	$(BIN)/ckptstudy --multirun $(ARGS)

test: suite ## the test suite, after `make suite` (includes one real multirun over micro checkpoints)
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## the edit loop (< 2 min): tests that need no suite and no long run (markers suite, long)
	$(BIN)/python -m pytest -m "not suite and not long and not slow"

test-full: suite ## every test, including `slow` ones (sweeps over every micro checkpoint, other launchers)
	$(BIN)/python -m pytest -m "slow or not slow"

$(VENV)/.bench-stamp: $(STAMP) pyproject.toml
	$(BIN)/python -c "import torch, transformers; print(f'torch=={torch.__version__}\ntransformers=={transformers.__version__}')" > $(VENV)/bench-constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/bench-constraints.txt -e ".[bench]"
	@touch $@

bench: $(VENV)/.bench-stamp ## ckptstudy vs TransformerLens / HF / the bare forward, each in a fresh process (~17 min on 2 cores; ARGS=--quick)
	$(BIN)/python benches/run.py $(ARGS)

gpu-check: suite ## is the GPU path right, what does it cost: CPU float32 vs the device, fused vs eager, time and memory vs the plan (< 8 min; ARGS='--device cpu')
	$(BIN)/ckptstudy-gpu-check $(ARGS)

bench-shape: suite ## default multirun at the Pythia-14m and -70m shapes (random init, fake offline hub) vs ckptstudy-plan: time and peak per family within 2x (ARGS='--steps 1000 --budget 4')
	$(BIN)/python benches/realshape.py $(ARGS)

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check src tests benches
	$(BIN)/ruff format --check src tests benches

format: $(STAMP) ## ruff fix + format
	$(BIN)/ruff check --fix src tests benches
	$(BIN)/ruff format src tests benches

clean: ## remove outputs (records, W&B runs) and caches; keeps .venv and the micro suite (ckptstudy-suite --where)
	rm -rf outputs/* multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
