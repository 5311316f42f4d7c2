# `make test` builds .venv on first use, installs the project with its dev extras, and runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The long tests (multi-process DDP, SIGKILL and resume); CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Tokenizer, data and a tiny model trained on the chitchat corpus, on CPU; results in runs/demo/.
demo: $(STAMP)
	$(BIN)/python train.py configs/tiny.yaml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
