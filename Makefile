# `make run` and `make test` do all the set-up themselves: a virtualenv in .venv, the project
# installed into it (editable) with its dependencies.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench

$(STAMP): pyproject.toml setup.py $(wildcard proto/kqd/v1/*.proto)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/kqd serve

test: setup
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check kqd client tests bench
	$(VENV)/bin/mypy
	cd proto && $(abspath $(VENV))/bin/buf lint

bench: setup
	$(PY) -m pip install --quiet --disable-pip-version-check matplotlib
	$(PY) -m bench scaling
	$(PY) -m bench remote
