# migrate: one-command entry points (run as root on Debian 12; see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV    ?= .venv
PYTEST  := $(VENV)/bin/pytest
MIGRATE := $(VENV)/bin/migrate
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-m unit -x"
PYTEST_ARGS ?=
# bench_run.py arguments: the matrix of issue 8 (~15 min). Quick: BENCH_ARGS="--mem 64".
# The lab: MIGRATE_BENCH_LAB / MIGRATE_BENCH_SUBNET (default mbench, 10.213.20.0/24).
BENCH_ARGS ?= --mem 64,256,1024 --rw 0,100,1024 --incompressible --plot

.PHONY: help setup test test-unit lint demo bench bench-256 lab-up lab-down lab-status

help:
	@echo "make setup      install system packages, CRIU >= 4.2, the venv (idempotent)"
	@echo "make test       setup, then the whole suite: unit, integration, e2e (needs root)"
	@echo "make test-unit  the pure unit tests only"
	@echo "make lint       ruff check, ruff format --check, mypy --strict, import-linter, generated docs current"
	@echo "make demo       setup, then bring up the sandbox lab and run the demo"
	@echo "make bench      migrate run vs the manual procedure vs raw ssh, 64 MiB-1 GiB (docs/benchmarks.md)"
	@echo "make bench-256  the same for one 256 MiB container only (about 1 minute)"
	@echo "make lab-up | lab-down | lab-status   the sandbox lab (docs/lab.md)"

setup:
	bash scripts/setup.sh

# pytest exits 5 when it collected nothing: that is a failure here, as is any other non-zero.
test: setup
	$(PYTEST) $(PYTEST_ARGS)

test-unit: setup
	$(PYTEST) -m unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check migrate tests benchmarks scripts
	$(VENV)/bin/ruff format --check migrate tests benchmarks scripts
	$(VENV)/bin/mypy migrate
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python scripts/protocol_doc.py --check
	$(VENV)/bin/python scripts/architecture_doc.py --check

demo: setup
	$(MIGRATE) demo

# Results in benchmarks/results/ (matrix.* / run-256mb.*); the plot needs the bench extra.
bench: setup
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python benchmarks/bench_run.py $(BENCH_ARGS)

bench-256: setup
	$(VENV)/bin/python benchmarks/bench_run.py

lab-up: setup
	$(MIGRATE) lab up

lab-down:
	$(MIGRATE) lab down

lab-status:
	$(MIGRATE) lab status
