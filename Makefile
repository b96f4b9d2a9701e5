# lindifuse: build, lint, test, demo, bench.
#   make setup   .venv (lindifuse editable + test deps) and .venv-lindi (reference lindi, zarr 2)
#   make lint    ruff check + ruff format --check
#   make test    setup, lint, pytest
#   make demo    make a small .lindi.tar with lindi, mount it, read it with zarr 3; mount the HDF5 file itself; index it
#   make bench   benchmarks/run_all.sh
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3.11)
VENV := .venv
LINDI_VENV := .venv-lindi
LINDI_REQS := tests/requirements-lindi.txt
LINT_PATHS := $(wildcard lindifuse tests benchmarks scripts)
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: sysdeps setup lint test demo bench clean

setup: sysdeps $(VENV)/.installed $(LINDI_VENV)/.installed

# FUSE itself and what pyfuse3 builds against (Debian). Installed when missing and we are root;
# otherwise say what to install.
sysdeps:
	@if command -v fusermount3 >/dev/null && pkg-config --exists fuse3 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing fuse3 libfuse3-dev pkg-config"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends fuse3 libfuse3-dev pkg-config >/dev/null; \
	else \
		echo "lindifuse needs: apt-get install fuse3 libfuse3-dev pkg-config (run as root)" >&2; \
		exit 1; \
	fi

# Re-run when pyproject.toml changes; the stamp is written only after success.
$(VENV)/.installed: pyproject.toml
	@$(VENV)/bin/python -c 'import sys' 2>/dev/null || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) -e '.[test]'
	@touch $@

$(LINDI_VENV)/.installed: $(LINDI_REQS)
	@$(LINDI_VENV)/bin/python -c 'import sys' 2>/dev/null || $(PYTHON) -m venv $(LINDI_VENV)
	$(LINDI_VENV)/bin/python -m pip install $(PIP_FLAGS) -r $(LINDI_REQS)
	@$(LINDI_VENV)/bin/python -c 'import lindi, zarr; assert zarr.__version__.startswith("2."), zarr.__version__'
	@touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: setup lint
	LINDI_PYTHON=$(CURDIR)/$(LINDI_VENV)/bin/python $(VENV)/bin/python -m pytest -q tests

demo: setup
	LINDI_PYTHON=$(CURDIR)/$(LINDI_VENV)/bin/python bash scripts/demo.sh

bench: setup
	@if [ -f benchmarks/run_all.sh ]; then \
		LINDI_PYTHON=$(CURDIR)/$(LINDI_VENV)/bin/python bash benchmarks/run_all.sh; \
	else \
		echo "no benchmarks/run_all.sh yet"; \
	fi

# Removes generated files only; the venvs stay (rm -rf .venv .venv-lindi to rebuild them).
clean:
	@if grep -qs " $(CURDIR)/demo/mnt " /proc/mounts; then fusermount3 -u -z demo/mnt; fi
	rm -rf demo .pytest_cache .ruff_cache build
