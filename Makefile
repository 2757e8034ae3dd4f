# The two commands of the quick start, and the rest.  Each target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
# A loaded 2-core machine can take longer than the default 20 s to start the ephemeral server.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_HOME ?= $(CURDIR)/.prefect
export HEADROOM_STATE_DIR ?= $(CURDIR)/.headroom
# The demo runs under a fixed budget so it behaves the same on any machine.
DEMO_BUDGET ?= 3GiB

.PHONY: demo test lint bench setup serve clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	HEADROOM_MEMORY_LIMIT=$(DEMO_BUDGET) $(PY) -m deployments.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy headroom

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

setup: $(STAMP)
	$(PY) -m deployments.setup

serve: setup
	$(PY) -m deployments.serve

clean:
	rm -rf $(VENV) .prefect .headroom demo-output

# Production-like stack on this machine: PostgreSQL-backed server, workers (docs/PRODUCTION.md).
.PHONY: prod-start prod-stop prod-status prod-deploy
prod-start: $(STAMP)
	scripts/prod start
prod-stop:
	scripts/prod stop
prod-status:
	scripts/prod status
prod-deploy: $(STAMP)
	scripts/prod deploy
