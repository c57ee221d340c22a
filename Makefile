# One entry point for people, CI and daily work. Each target builds its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tui,test]'
	touch $(STAMP)

venv: $(STAMP)

## Build the demo Horos library in ./horos-demo and back it up (the main job, end to end).
demo: $(STAMP)
	$(VENV)/bin/horos-backup demo --dir horos-demo

## The whole test suite (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q

## The long fault loops too (hundreds of SIGKILLs).
test-slow: $(STAMP)
	HOROS_SLOW=1 $(PY) -m pytest -q

## Speed figures (not a test): see scripts/.
bench: $(STAMP)
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) horos-demo .pytest_cache
