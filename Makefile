# Tollgate: every target bootstraps uv and the locked venv on a machine that has only python3 and pip.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
VENV := .venv
TG := $(VENV)/bin/tollgate
PYTEST_ARGS ?=
CONFIG ?= configs/pipeline.yaml
ENV ?= dev

.PHONY: help bootstrap data engines repro demo test test-fast test-unit test-integration test-e2e test-scale lint format bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

bootstrap: $(VENV)/.synced  ## install uv if missing and sync the locked venv

# --compile-bytecode: every command, server and test process imports Prefect, MLflow and GX; with no .pyc files
# (PYTHONDONTWRITEBYTECODE on CI machines) each one recompiled them, ~5 s per process.
$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# The bundled snapshot is DVC-tracked, not in git: regenerate it deterministically (the command checks the
# md5 against data.dvc and pushes it to the project's local DVC remote).
data/snapshot.parquet: data.dvc | $(VENV)/.synced
	$(TG) data generate

data: data/snapshot.parquet  ## (re)build the bundled training snapshot recorded in data.dvc

demo: bootstrap data  ## run the whole lifecycle on the bundled dataset
	$(TG) demo

# The test tiers' engines: PostgreSQL's server programs (Debian's postgresql package, installed when initdb is
# missing) for the scale tier, and Debian's chromium (when missing) to open the release report the way a reader
# does; the S3-compatible store (moto) and Dask come with the locked venv.
engines:  ## install what the test tiers run on (Debian's postgresql and chromium, when missing)
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(echo "installing Debian's postgresql (the scale tier's PostgreSQL) ..." && \
		 (apt-get install -y -q postgresql >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null)))
	@command -v chromium >/dev/null 2>&1 || \
		(echo "installing Debian's chromium (opens the release report in the tests) ..." && \
		 (apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		  (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null)))

# Two pytest-xdist workers, one test file each at a time (module fixtures stay in one worker), the longest tiers
# handed out first (tests/suite_guard.py TIER_ORDER; --no-loadscope-reorder keeps that order); each worker starts
# its own stack on its own free ports in its own temp state folder. Most of a test's time is spent waiting
# (servers, rollout phases, leases), so two workers on two cores finish in about half the time.
TEST_WORKERS ?= 2
test: bootstrap data engines  ## run every test tier (unit, integration, e2e, scale), TEST_WORKERS (2) at a time
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: bootstrap data  ## the inner loop (~2 min): unit tests plus one end-to-end smoke path (train -> deploy -> predict)
	$(VENV)/bin/pytest tests -m "unit or smoke" $(PYTEST_ARGS)

test-unit: bootstrap data  ## unit tests only (seconds)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: bootstrap data  ## flows against real servers on free ports
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test-e2e: bootstrap data  ## the lifecycle as a user runs it
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

test-scale: bootstrap data engines  ## the scale tier: Postgres + S3-compatible store + Dask, the whole loop through the CLI
	$(VENV)/bin/pytest tests/scale $(PYTEST_ARGS)

lint: bootstrap  ## ruff lint + format check, mypy, deptry (declared dependencies)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/deptry .

format: bootstrap  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: bootstrap data  ## benchmarks; each prints a ratio against its named baseline
	$(VENV)/bin/python -m bench

# The bundled config goes through `dvc repro` (dvc.yaml and dvc.lock record configs/pipeline.yaml); another
# CONFIG runs the same stages without DVC's cache into data/build/<registered model>/.
repro: bootstrap data  ## rebuild validate -> train -> evaluate for CONFIG (default configs/pipeline.yaml) and ENV (dev)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m tollgate.app.stages repro --config "$(CONFIG)" --env "$(ENV)"

clean:  ## remove the venv and local state (.tollgate/)
	-$(TG) down 2>/dev/null
	rm -rf $(VENV) .tollgate
