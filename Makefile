# `make test` works on a fresh machine with python3, make and a C++ compiler (inductor's, for the torch.compile
# tests): it builds .venv, installs the project with its dev extras (pinned by constraints.txt) and runs lint + the
# test suite.
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

# The torch.compile tests run inductor, which builds C++ on CPU (Debian: apt-get install g++).
# Two test processes (pytest-xdist, a file per process at a time: module fixtures are built once): most of the suite
# is subprocesses starting up and waiting on each other, which two processes overlap on CI's 2 cores. Progress: one
# dot per test and the share of the suite done; the 15 slowest tests are listed at the end (what to make cheaper).
test: lint
	@command -v $${CXX:-g++} >/dev/null || { echo "make test: error: no C++ compiler ($${CXX:-g++}) for the torch.compile tests; install g++ (apt-get install g++) or set CXX" >&2; exit 1; }
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

demo: venv
	$(PY) train.py --resume auto

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
