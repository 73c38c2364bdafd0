# One command each, on a fresh machine: `make demo` (set up, train, test) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data: $ABLATE_DATA_DIR, else ../shared/data when it exists, else ./data (downloaded).
DATA_DIR ?= $(or $(ABLATE_DATA_DIR),$(if $(wildcard ../shared/data/MNIST),../shared/data,./data))
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-end-to-end lint zoo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The Inception network of the "Advanced CNN" lecture on MNIST: fit, then test the best checkpoint.
demo: install
	$(BIN)/ablate fit --config experiments/quickstart_fast.yaml --data.data_dir $(DATA_DIR) --test_after_fit true

# The default tier: in-process (the CLI's main(argv), Trainers built directly), kept under eight minutes
# on two cores; the slowest 15 tests are printed, so a test that grows slow is seen.
test: install
	$(BIN)/python -m pytest -m "not slow and not end_to_end" --durations=15 $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# CI's second tier, after `make test`: what only separate processes show (`ablate` in a subprocess, DDP,
# SLURM, signals, kills; under DDP the failing rank's error line is the last one; the README's "Your own
# ablation" run as written by the console script) and the benchmarks. The rest of `make test-slow` (every
# study arm's smoke sweep, torch.compile, the real-CIFAR whitening fit) is for a longer budget.
test-end-to-end: install
	$(BIN)/python -m pytest -m end_to_end --durations=15 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

zoo: install
	$(BIN)/ablate zoo --format md

clean:
	rm -rf $(VENV) runs lightning_logs wandb .pytest_cache
