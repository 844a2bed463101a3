# dltrain: `make train` and `make test` set everything up on a fresh machine.
# TORCH_SPEC picks the PyTorch build; CI sets TORCH_SPEC=torch==2.13.0 (a CPU build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch>=2.6
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEC := $(VENV)/.torch-spec

.PHONY: setup train test test-fast lint bench bench-gpu clean FORCE

setup: $(STAMP)

# The setup depends on TORCH_SPEC too: the file changes (and the venv is brought up to date)
# only when the spec differs from the one it was set up with.
$(SPEC): FORCE
	@mkdir -p $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != "$(TORCH_SPEC)" ]; then echo "$(TORCH_SPEC)" > $@; fi

$(STAMP): pyproject.toml $(SPEC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: setup  ## train the default model (MLP on scikit-learn's digits); pass overrides as ARGS="model=cnn"
	$(BIN)/dltrain $(ARGS)

test: lint  ## lint and the layer contracts, then the whole test suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest tests

test-fast: setup  ## the fast tests only
	$(BIN)/python -m pytest -m "not slow" tests

lint: setup  ## ruff (pyflakes, import order, bugbear) and import-linter's layer contracts (pyproject.toml)
	$(BIN)/ruff check dltrain hydra_plugins tests benchmarks examples
	$(BIN)/lint-imports

bench: setup  ## engine-overhead, CLI-startup, run start-up, checkpoint-cost, parallel-sweep, thread-contention, ensemble, own-data and peers benchmarks (each prints its targets; a miss does not stop the rest)
	-$(BIN)/python benchmarks/engine_overhead.py
	-$(BIN)/python benchmarks/engine_overhead.py --checkpoint-every-n-steps 50 --threads 1
	-$(BIN)/python benchmarks/cli_startup.py
	-$(BIN)/python benchmarks/startup.py
	-$(BIN)/python benchmarks/checkpoint_cost.py
	-$(BIN)/python benchmarks/sweep_parallel.py
	-$(BIN)/python benchmarks/threads_contention.py
	-$(BIN)/python benchmarks/ensemble.py
	-$(BIN)/python benchmarks/own_data.py
	-$(BIN)/python benchmarks/peers.py

bench-gpu: setup  ## CNN throughput vs a hand-written loop, and time to 98% (needs the MNIST files; CUDA if present)
	$(BIN)/python benchmarks/gpu_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
