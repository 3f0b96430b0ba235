# `make test` works on a fresh machine with only python3 and make: it builds .venv, installs the project with its
# dev extras (pinned by constraints.txt) and runs lint + the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv test lint demo clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The machine's pip config may point at a local CPU-only torch wheel; torchvision needs the registry build.
	PIP_FIND_LINKS= $(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q

demo: venv
	$(PY) train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
