# Quick start: `make demo` and `make test`. Both build .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean deploy-check deploy-deps

# tools/install-testbed-deps.sh: the testbed's Debian packages (as root, when missing),
# before pip builds NetfilterQueue against libnetfilter-queue.
$(STAMP): pyproject.toml Makefile
	tools/install-testbed-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 exactly: a CPU wheel on this machine's disk; other specs pull GBs of CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,train,deploy,ledger,testbed,privacy]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/shoal demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Hardhat 2.29.1 (Node 20, from npm): the independent EVM node the ledger suite also runs on.
HARDHAT := tools/hardhat/node_modules/.installed
$(HARDHAT): tools/hardhat/package.json tools/hardhat/package-lock.json
	cd tools/hardhat && npm ci --no-audit --no-fund --loglevel=error
	touch $(HARDHAT)

unit: $(STAMP) $(HARDHAT) deploy-deps
	$(VENV)/bin/pytest -q -p no:cacheprovider

# pytest exits 5 when it collects nothing; make treats any non-zero as failure.
test: lint typecheck deploy-check unit

# hadolint, yamllint, kubectl kustomize + kubernetes-validate --strict; all offline.
deploy-check: $(STAMP)
	PATH=$(VENV)/bin:$$PATH deploy/check.sh

# docker.io + debootstrap from Debian for the real image test (root only; else it skips).
deploy-deps:
	deploy/install-test-deps.sh

bench: $(STAMP)
	$(PY) benchmarks/bench_transport.py
	$(PY) benchmarks/bench_idle_memory.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
