# `make test` and `make demo` create or refresh .venv (the default, current stack) from
# constraints.txt when the pins or pyproject.toml changed, and skip the install when nothing did.
# `make test` also builds .venv-petastorm (petastorm 0.12.1 and its older stack, from
# constraints-petastorm.txt) for the compatibility suite, which drives it through subprocesses.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PETASTORM_VENV ?= .venv-petastorm
STAMP  := $(VENV)/.installed
PETASTORM_STAMP := $(PETASTORM_VENV)/.installed
PY     := $(VENV)/bin/python
PIP_INSTALL = -m pip install --quiet --disable-pip-version-check
PYTEST_ARGS ?=

# requires-python in pyproject.toml; the petastorm env needs <3.13 (pyarrow 14, numpy 1.26 wheels).
define check_python
	@$(PYTHON) -c 'import sys; v=sys.version_info; sys.exit(0 if (3,11)<=v[:2]<(3,$(1)) else "error: Python 3.11-3.$(shell expr $(1) - 1) is required (3.11 recommended), found %d.%d at $(PYTHON)" % v[:2])'
endef

.PHONY: test demo lint venv petastorm-venv check-java clean

venv: $(STAMP)

petastorm-venv: $(PETASTORM_STAMP)

# A venv made before the current stack may still hold petastorm: the default env has none.
$(STAMP): pyproject.toml constraints.txt
	$(call check_python,14)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) -c constraints.txt -e ".[dev]"
	@$(PY) -m pip uninstall --quiet --yes petastorm 2>/dev/null || true
	@touch $@

$(PETASTORM_STAMP): pyproject.toml constraints-petastorm.txt
	$(call check_python,13)
	@test -x $(PETASTORM_VENV)/bin/python || $(PYTHON) -m venv $(PETASTORM_VENV)
	$(PETASTORM_VENV)/bin/python $(PIP_INSTALL) -c constraints-petastorm.txt -e ".[petastorm,dev]"
	@touch $@

check-java:
	@sh scripts/check_java.sh

# The compatibility suite (tests/test_petastorm_compat.py) finds the petastorm env here and
# fails without it; PIPELINE_SKIP_PETASTORM_COMPAT=1 skips it on a developer's machine.
test: check-java $(STAMP) $(PETASTORM_STAMP)
	PIPELINE_PETASTORM_PYTHON=$(abspath $(PETASTORM_VENV))/bin/python $(PY) -m pytest $(PYTEST_ARGS)

demo: check-java $(STAMP)
	$(VENV)/bin/pipeline demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check pipeline jobs tests

clean:
	rm -rf $(VENV) $(PETASTORM_VENV) .pytest_cache build *.egg-info
