# Two entry points for a fresh machine; each builds its own virtual environment (.venv) first.
#   make quickstart   install, then pretrain SimCLR on the embedded image set, fine-tune, compare with scratch
#   make test         install (with dev tools), then lint, type-check and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: quickstart test lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/visiontransfer quickstart

test: $(STAMP)
	$(BIN)/ruff check visiontransfer tests benchmarks
	$(BIN)/ruff format --check visiontransfer tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -n auto --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check visiontransfer tests benchmarks
	$(BIN)/ruff format --check visiontransfer tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
