# secure-keys developer entry points. `make test` is what CI runs (.ci/run).
# Everything is installed from this repository's own files into .venv at the root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependency declaration changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test lint typecheck imports unit bench demo clean help

help:
	@echo "make test   - set up .venv and run ruff, mypy --strict, import-linter and pytest"
	@echo "make demo   - set up .venv and run the local-KMS demo (seal, open, rotate the KEK)"
	@echo "make bench  - run the benchmarks in bench/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check operator sidecar tests bench
	$(BIN)/ruff format --check operator sidecar tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck imports unit

bench: $(STAMP)
	$(BIN)/python bench/envelope.py

demo: $(STAMP)
	$(BIN)/python -m secure_keys.demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
