# segflow — two commands on a fresh clone: `make demo` and `make test`.
# Everything (virtualenv, caches, Airflow home, warehouse, MLflow store, generated data) stays in this directory.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
export UV_CACHE_DIR ?= $(CURDIR)/.cache/uv
export UV_PYTHON_INSTALL_DIR ?= $(CURDIR)/.cache/uv-python
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export XDG_CACHE_HOME ?= $(CURDIR)/.cache
# uv from PATH, else a project-local copy bootstrapped with pip.
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
SEGFLOW := $(CURDIR)/.venv/bin/segflow

DEMO_USERS ?= 10000
DEMO_DAYS ?= 180
DEMO_AS_OF ?= 2026-09-30

.PHONY: help install demo generate run summary test test-fast docs clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet uv

install: $(UV)  ## create .venv from uv.lock, prepare Airflow's metadata DB, pool and the dbt manifest
	$(UV) sync --frozen
	$(SEGFLOW) init

demo: install  ## install, generate 10k users x 180 days, run the whole pipeline, print the summary
	$(SEGFLOW) generate --users $(DEMO_USERS) --days $(DEMO_DAYS) --end-date $(DEMO_AS_OF) --out data/generated
	$(SEGFLOW) run --as-of $(DEMO_AS_OF)

generate: install  ## regenerate the demo data only
	$(SEGFLOW) generate --users $(DEMO_USERS) --days $(DEMO_DAYS) --end-date $(DEMO_AS_OF) --out data/generated

run: install  ## run the pipeline for AS_OF (default: the demo date)
	$(SEGFLOW) run --as-of $${AS_OF:-$(DEMO_AS_OF)}

summary:  ## print the summary of the last run
	$(SEGFLOW) summary

test: $(UV)  ## the test suite (unit, DAG integrity, end to end); what CI runs
	$(UV) sync --frozen
	$(UV) run --frozen pytest

test-fast: $(UV)  ## unit tests only
	$(UV) sync --frozen
	$(UV) run --frozen pytest -m "not e2e"

docs: install  ## build the dbt docs site into docs/site (open docs/site/index.html)
	$(UV) run --frozen python -m segflow.docs

clean:  ## remove all local state (keeps .venv)
	rm -rf data warehouse mlruns exports .airflow docs/site dbt_project/target dbt_project/logs
