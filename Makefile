# segflow — two commands on a fresh clone: `make demo` and `make test`.
# Everything (virtualenv, caches, Airflow home, warehouse, MLflow store, generated data) stays in this directory.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
export UV_CACHE_DIR ?= $(CURDIR)/.cache/uv
export UV_PYTHON_INSTALL_DIR ?= $(CURDIR)/.cache/uv-python
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export XDG_CACHE_HOME ?= $(CURDIR)/.cache
# Installed packages are compiled to bytecode once: where PYTHONDONTWRITEBYTECODE is set (as on CI), every task
# process would otherwise recompile GX, MLflow and Airflow from source (~13 s per process, see BENCHMARKS.md).
export UV_COMPILE_BYTECODE ?= 1
# uv from PATH, else a project-local copy bootstrapped with pip.
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
SEGFLOW := $(CURDIR)/.venv/bin/segflow

DEMO_USERS ?= 10000
DEMO_DAYS ?= 180
DEMO_AS_OF ?= 2026-09-30

# Debian packages of the browser and compose tests (they skip, with the reason, when these are missing).
SYSTEM_PACKAGES := chromium chromium-driver docker-compose

.PHONY: help install system-deps demo generate run summary test test-fast lint format docs ui ui-stop bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet uv

install: $(UV)  ## create .venv from uv.lock, prepare Airflow's metadata DB and pool
	$(UV) sync --frozen
	$(SEGFLOW) init

system-deps:  ## optional: Debian packages for the browser and compose tests (apt, needs root or sudo)
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$sudo apt-get install -y -qq $$missing >/dev/null || { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing >/dev/null; }; \
	fi

demo: install  ## install, generate 10k users x 180 days, run the whole pipeline, print the summary
	$(SEGFLOW) generate --users $(DEMO_USERS) --days $(DEMO_DAYS) --end-date $(DEMO_AS_OF) --out data/generated
	$(SEGFLOW) run --as-of $(DEMO_AS_OF)

generate: install  ## regenerate the demo data only
	$(SEGFLOW) generate --users $(DEMO_USERS) --days $(DEMO_DAYS) --end-date $(DEMO_AS_OF) --out data/generated

run: install  ## run the pipeline for AS_OF (default: the demo date)
	$(SEGFLOW) run --as-of $${AS_OF:-$(DEMO_AS_OF)}

summary:  ## print the summary of the last run
	$(SEGFLOW) summary

# Two workers, one test file each at a time: the machines here have 2 cores.
PYTEST_WORKERS ?= 2

test: $(UV)  ## the test suite (unit, DAG integrity, end to end, operations, browser); skips say what they need
	$(UV) sync --frozen
	$(UV) run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=30

test-fast: $(UV)  ## unit tests only
	$(UV) sync --frozen
	$(UV) run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not e2e"

# sqlfluff's dbt templater compiles the project: it needs a warehouse path (an empty scratch file will do).
LINT_ENV := SEGFLOW_WAREHOUSE_PATH=$(CURDIR)/.cache/lint/warehouse.duckdb DBT_TARGET_PATH=$(CURDIR)/.cache/lint/dbt-target \
	DBT_LOG_PATH=$(CURDIR)/.cache/lint/dbt-logs

lint: $(UV)  ## ruff (lint + format check), mypy on the core packages, sqlfluff over the dbt project
	$(UV) sync --frozen
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy
	mkdir -p .cache/lint && $(LINT_ENV) $(UV) run --frozen sqlfluff lint dbt_project/models

format: $(UV)  ## apply ruff's fixes and formatting, and sqlfluff's fixes
	$(UV) run --frozen ruff check --fix .
	$(UV) run --frozen ruff format .
	mkdir -p .cache/lint && $(LINT_ENV) $(UV) run --frozen sqlfluff fix dbt_project/models

docs: install  ## build the dbt docs site into docs/site (open docs/site/index.html)
	$(UV) run --frozen python -m segflow.local.docs

ui: install  ## start the Airflow UI and services, the MLflow UI, the docs sites and the segment API on localhost; prints URLs, login and an API key
	$(SEGFLOW) ui start

ui-stop:  ## stop exactly the processes `make ui` started
	$(SEGFLOW) ui stop

# Sizes in users; datasets are cached in bench/cache (1M users: ~30M events, 3M orders, ~8 GB, ~2.5 min to generate).
BENCH_SIZES ?= 10000,100000,1000000

bench: install  ## benchmark every stage at 10k, 100k and 1M users; writes bench/results/*.json and BENCHMARKS.md
	$(SEGFLOW) bench --sizes $(BENCH_SIZES)

clean:  ## remove all local state (keeps .venv)
	rm -rf data warehouse mlruns exports .airflow .ui gx docs/site dbt_project/target dbt_project/logs bench/work
