# echolab: `make demo` runs the comparison, `make test` the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1

.PHONY: install test lint bench demo serve-threaded serve-async clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,loadtest]'
	touch $@

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check services tests loadtest
	$(BIN)/ruff format --check services tests loadtest
	$(BIN)/mypy services

bench: install
	$(BIN)/python -m echolab.benchmark

serve-threaded: install
	$(BIN)/echolab serve threaded --host $(HOST)

serve-async: install
	$(BIN)/echolab serve async --host $(HOST) --metrics-port 8001 --port 9091

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache .hypothesis
