# The README's two commands are `make demo` and `make test`; both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changed (idempotent and quick otherwise).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/dms demo

test: install
	$(PY) -m ruff check server actors graph_schema protocols security tests bench
	$(PY) -m pytest --durations=40

lint: install
	$(PY) -m ruff check server actors graph_schema protocols security tests bench
	$(PY) -m mypy

bench: install
	$(PY) bench/powerflow.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
