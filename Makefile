# The README's two commands: `make quickstart` and `make test`.
# Both create .venv on first use; TORCH pins the CPU wheel (override for CUDA).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
OUT ?= out/quickstart
BIN := $(VENV)/bin

.PHONY: quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-local: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[local,ray]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-local

# Embed the bundled sample with the default local model (offline, no keys).
quickstart: $(VENV)/.installed-local
	$(BIN)/embedfleet run jobs/quickstart.toml --output $(OUT)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

clean:
	rm -rf $(VENV) out
