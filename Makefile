# dltrain: `make train` and `make test` set everything up on a fresh machine.
# TORCH_SPEC picks the PyTorch build; CI sets TORCH_SPEC=torch==2.13.0 (a CPU build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch>=2.6
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup train test test-fast bench bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: setup  ## train the default model (MLP on scikit-learn's digits); pass overrides as ARGS="model=cnn"
	$(BIN)/dltrain $(ARGS)

test: setup  ## the whole test suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest tests

test-fast: setup  ## the fast tests only
	$(BIN)/python -m pytest -m "not slow" tests

bench: setup  ## engine-overhead, CLI-startup and parallel-sweep benchmarks
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/engine_overhead.py --checkpoint-every-n-steps 50 --threads 1
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/sweep_parallel.py

bench-gpu: setup  ## CNN throughput vs a hand-written loop, and time to 98% (needs the MNIST files; CUDA if present)
	$(BIN)/python benchmarks/gpu_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
