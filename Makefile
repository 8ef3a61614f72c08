# amperity-auth-proxy: `make run` and `make test` are the two commands you need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/amperity-proxy run --config config.example.yaml

test: lint typecheck pytest

lint: install
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

demo: install
	$(BIN)/python -m proxy.demo

bench: install
	$(BIN)/python bench/stream.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
