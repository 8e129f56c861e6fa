# `make test` and `make demo` create or refresh .venv from constraints.txt when the pins or
# pyproject.toml changed, and skip the install when nothing did.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
STAMP  := $(VENV)/.installed
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo lint venv check-java clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; v=sys.version_info; sys.exit(0 if (3,10)<=v[:2]<(3,13) else "error: Python 3.10-3.12 is required (3.11 recommended), found %d.%d at $(PYTHON)" % v[:2])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@touch $@

check-java:
	@sh scripts/check_java.sh

test: check-java $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: check-java $(STAMP)
	$(PY) jobs/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check pipeline jobs tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
