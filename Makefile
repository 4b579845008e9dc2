# The two commands of a fresh clone: `make report` reproduces every table and figure into
# reports/, `make test` runs the test suite. Each first installs what is missing into the
# current Python: the CPU build of torch (a bare `torch` requirement can pull a multi-GB
# CUDA build), then this package with its test and ray extras. PYTHON=... picks another
# interpreter (e.g. a virtual environment's).
PYTHON ?= python

.PHONY: report test install

report: install
	$(PYTHON) run_all.py

test: install
	$(PYTHON) -m pytest -q

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet torch==2.13.0
	@$(PYTHON) -c "import importlib.metadata as m; m.version('theorybench'); import pytest, xdist, ray" \
		2>/dev/null || $(PYTHON) -m pip install --quiet -e '.[test,ray]'
