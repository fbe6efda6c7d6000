# migrate: one-command entry points (run as root on Debian 12; see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV    ?= .venv
PYTEST  := $(VENV)/bin/pytest
MIGRATE := $(VENV)/bin/migrate
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-m unit -x"
PYTEST_ARGS ?=
# Extra bench_run.py arguments, e.g. make bench BENCH_ARGS="--lab mb --subnet 10.213.10.0/24"
BENCH_ARGS ?=

.PHONY: help setup test test-unit lint demo bench lab-up lab-down lab-status

help:
	@echo "make setup      install system packages, CRIU >= 4.2, the venv (idempotent)"
	@echo "make test       setup, then the whole suite: unit, integration, e2e (needs root)"
	@echo "make test-unit  the pure unit tests only"
	@echo "make lint       ruff + mypy"
	@echo "make demo       setup, then bring up the sandbox lab and run the demo"
	@echo "make bench      migrate run vs the manual procedure vs raw ssh (docs/benchmarks.md)"
	@echo "make lab-up | lab-down | lab-status   the sandbox lab (docs/lab.md)"

setup:
	bash scripts/setup.sh

# pytest exits 5 when it collected nothing: that is a failure here, as is any other non-zero.
test: setup
	$(PYTEST) $(PYTEST_ARGS)

test-unit: setup
	$(PYTEST) -m unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check migrate tests
	$(VENV)/bin/mypy migrate

demo: setup
	$(MIGRATE) demo

# Uses its own lab (mbench, 10.213.20.0/24 unless BENCH_ARGS says --lab/--subnet).
bench: setup
	$(VENV)/bin/python benchmarks/bench_run.py $(BENCH_ARGS)

lab-up: setup
	$(MIGRATE) lab up

lab-down:
	$(MIGRATE) lab down

lab-status:
	$(MIGRATE) lab status
