# Developer and CI entry points. `make test` = lint + typecheck + pytest (what .ci/run runs).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= embedded,test,dev
PYTEST_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=

.PHONY: help venv up down logs status test test-deps lint typecheck pytest bench chaos clean distclean

help:
	@echo "make venv       create $(VENV) and install the project (reinstalls when pyproject.toml changes)"
	@echo "make up|down|status|logs   local stack: PostgreSQL, Tansu broker, the five services (.local/)"
	@echo "make test       lint + typecheck + pytest (PYTEST_ARGS='-m \"not integration\"' for unit tests only)"
	@echo "make chaos      fault injection on a private stack (CHAOS_ARGS='--seed N', '--smoke'); README: Fault injection"
	@echo "make lint | typecheck | bench | clean | distclean"

venv: $(STAMP)

# A fresh Debian may lack ensurepip (package python3-venv): install it when root, then retry.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "error: $(PYTHON) is $$($(PYTHON) --version 2>&1); Python >= 3.11 is needed (PYTHON=python3.11 make ...)" >&2; exit 1; }
	@if [ ! -x $(PY) ] || ! $(PY) -m pip --version >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	    rm -rf $(VENV); \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "venv: installing python3-venv with apt-get"; \
	      export DEBIAN_FRONTEND=noninteractive; \
	      v=$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	      apt-get -o DPkg::Lock::Timeout=300 -y -q install python3-venv "python$$v-venv" >/dev/null 2>&1 \
	        || { apt-get -q update >/dev/null 2>&1; apt-get -o DPkg::Lock::Timeout=300 -y -q install python3-venv "python$$v-venv" >/dev/null 2>&1; } \
	        || apt-get -o DPkg::Lock::Timeout=300 -y -q install python3-venv; \
	    fi; \
	    $(PYTHON) -m venv $(VENV) || { echo "error: cannot create a virtualenv (install python3-venv)" >&2; exit 1; }; \
	  fi; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $(STAMP)

up: venv
	$(PY) deploy/local/stack.py up

down:
	@if [ -x $(PY) ]; then $(PY) deploy/local/stack.py down; else echo "no $(VENV): nothing to stop"; fi

status: venv
	$(PY) deploy/local/stack.py status

logs: venv
	$(PY) deploy/local/stack.py logs

test: venv test-deps lint typecheck pytest

test-deps:
	@deploy/local/test-deps.sh

lint: venv
	$(PY) -m ruff check .

typecheck: venv
	$(PY) -m mypy

# pytest exits 5 when it collected nothing (a wrong path, a -m or -k that matches no test, a broken
# collection hook): that is a failure, never a green run that tested nothing.
pytest: venv
	@set +e; $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected; failing (exit 5)" >&2; fi; exit $$rc

bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

chaos: venv
	$(PY) -m bench.chaos $(CHAOS_ARGS)

clean: down
	rm -rf .local .mypy_cache .ruff_cache .pytest_cache .hypothesis test-artifacts build *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
