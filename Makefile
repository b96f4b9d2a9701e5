# lindifuse: build, lint, test, demo, bench.
#   make setup   .venv (lindifuse editable + test deps) and .venv-lindi (reference lindi, zarr 2)
#   make lint    ruff check + ruff format --check
#   make test    setup, lint, pytest
#   make demo    make a small .lindi.tar with lindi, mount it, read it with zarr 3; mount the HDF5 file itself; index it
#   make bench   benchmarks/run_all.sh
#   make install    system-wide: a venv in $(PREFIX) on the system python, links in BINDIR/SBINDIR
#   make uninstall  remove what `make install` put there
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3.11)
VENV := .venv
LINDI_VENV := .venv-lindi
LINDI_REQS := tests/requirements-lindi.txt
LINT_PATHS := $(wildcard lindifuse tests benchmarks scripts)
PIP_FLAGS ?= -q --disable-pip-version-check

# System install (see README "Install for system use"). Every variable may be overridden, e.g.
# `make install PREFIX=/tmp/x/opt BINDIR=/tmp/x/bin SBINDIR=/tmp/x/sbin UNITDIR=/tmp/x/units`
# (the tests do that). Built on the distribution's interpreter so that every user can run it:
# Debian's /usr/bin/python3.11, else the python3.11 on PATH (a warning if it lives in a home).
PREFIX ?= /opt/lindifuse
BINDIR ?= /usr/local/bin
SBINDIR ?= /sbin
UNITDIR ?= /etc/systemd/system
SYSTEM_PYTHON ?= $(shell if [ -x /usr/bin/python3.11 ]; then echo /usr/bin/python3.11; \
	else command -v python3.11 || echo python3.11; fi)

.PHONY: sysdeps setup lint test demo bench clean install uninstall

# The editable install leaves lindifuse/ uncompiled, and with PYTHONDONTWRITEBYTECODE set every
# daemon start would compile all of it again (about 150 ms of each mount): compile it here.
setup: sysdeps $(VENV)/.installed $(VENV)/.pyfuse3 $(LINDI_VENV)/.installed
	@$(VENV)/bin/python -m compileall -q lindifuse

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

# pyfuse3 rebuilt from its sdist with patches/pyfuse3/<version>.patch (open without a round
# trip, cached listings); keeps the stock build when that fails (see scripts/build-pyfuse3.sh).
$(VENV)/.pyfuse3: $(VENV)/.installed scripts/build-pyfuse3.sh $(wildcard patches/pyfuse3/*.patch)
	bash scripts/build-pyfuse3.sh $(VENV)/bin/python
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

# A self-contained venv in $(PREFIX) (rebuilt from scratch each time), lindifuse installed into it
# non-editable with `pip install .`; `lindifuse` linked into BINDIR; mount.lindifuse and
# mount.fuse.lindifuse into SBINDIR, where mount(8) looks for helpers (`mount -t fuse.lindifuse`,
# fstab); the systemd template unit into UNITDIR with BINDIR filled in. umask 022: readable by all.
install: sysdeps
	@umask 022; set -e; \
	py="$(SYSTEM_PYTHON)"; real=$$(readlink -f "$$(command -v "$$py")"); \
	case "$$real" in /root/*|/home/*) echo "warning: $$real lives in a home directory:" \
		"other users may not be able to run it (set SYSTEM_PYTHON=/usr/bin/python3.11)" >&2;; esac; \
	"$$py" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11), sys.version' \
		|| { echo "$$py: need Python 3.11+ with venv (apt-get install python3.11-venv)" >&2; exit 1; }; \
	echo "installing lindifuse into $(PREFIX) (python: $$real)"; \
	"$$py" -m venv --clear "$(PREFIX)"; \
	"$(PREFIX)/bin/python" -m pip install $(PIP_FLAGS) .; \
	rm -rf build; \
	mkdir -p "$(BINDIR)" "$(SBINDIR)"; \
	ln -sfn "$(PREFIX)/bin/lindifuse" "$(BINDIR)/lindifuse"; \
	ln -sfn "$(PREFIX)/bin/lindifuse" "$(SBINDIR)/mount.lindifuse"; \
	ln -sfn "$(PREFIX)/bin/lindifuse" "$(SBINDIR)/mount.fuse.lindifuse"; \
	if [ -d "$(UNITDIR)" ] || [ "$(UNITDIR)" != /etc/systemd/system ]; then \
		mkdir -p "$(UNITDIR)"; \
		sed 's|/usr/local/bin/|$(BINDIR)/|g' systemd/lindifuse@.service > "$(UNITDIR)/lindifuse@.service"; \
		if [ "$(UNITDIR)" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then \
			systemctl daemon-reload; fi; \
	fi; \
	"$(BINDIR)/lindifuse" --version

# Removes only what `make install` made: links that point into $(PREFIX), the unit, the venv.
uninstall:
	@set -e; \
	for l in "$(BINDIR)/lindifuse" "$(SBINDIR)/mount.lindifuse" "$(SBINDIR)/mount.fuse.lindifuse"; do \
		if [ -L "$$l" ] && [ "$$(readlink "$$l")" = "$(PREFIX)/bin/lindifuse" ]; then rm -f "$$l"; fi; \
	done; \
	if [ -f "$(UNITDIR)/lindifuse@.service" ] && grep -q lindifuse "$(UNITDIR)/lindifuse@.service"; then \
		rm -f "$(UNITDIR)/lindifuse@.service"; fi; \
	if [ -f "$(PREFIX)/pyvenv.cfg" ] && [ -e "$(PREFIX)/bin/lindifuse" ]; then rm -rf "$(PREFIX)"; \
	elif [ -e "$(PREFIX)" ]; then echo "$(PREFIX) is not a lindifuse install: left alone" >&2; fi; \
	echo "lindifuse uninstalled from $(PREFIX)"
