# Two commands for a newcomer (see README):  make demo   |   make test
# Both create .venv and install what they need. torch is installed first and pinned to a CPU
# build; a plain `torch` requirement can pull a multi-GB CUDA build. Override with
# `make demo TORCH="torch==X.Y.Z"`. `make test` runs ruff (format and lint) before the tests.
VENV  := .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/matcli demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
