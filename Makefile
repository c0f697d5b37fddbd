# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# mypy checks the sources under their installed names: this directory is the `ringtape`
# package (pyproject.toml maps it), so mypy runs where `ringtape` links back here.
MYPY_ROOT := $(VENV)/mypy
SOURCES := __init__.py capture nautilus storage tools tests

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	mkdir -p $(MYPY_ROOT) && ln -sfn ../.. $(MYPY_ROOT)/ringtape
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ringtape demo

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	cd $(MYPY_ROOT) && ../bin/mypy --config-file ../../pyproject.toml

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/ringtape bench --out bench.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache ringtape-demo
