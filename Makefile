# The two commands of the README: `make demo` (the main job) and `make test` (lint, types, tests).
# Both create .venv on first use; torch is pinned to the CPU build that installs quickly here.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m k1lib k1lib-demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff check modsel k1lib tests benchmarks
	$(VENV)/bin/ruff format --check modsel k1lib tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_modsel.py

clean:
	rm -rf $(VENV) build *.egg-info
