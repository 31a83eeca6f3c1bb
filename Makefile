# Two commands matter: `make run` (worker on the embedded default) and `make test`.
# Both create .venv and install everything on first use (PyPI only; no other downloads).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install bytecode chromium prometheus run reset receiver test bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

## Compiled bytecode for our modules, even where PYTHONDONTWRITEBYTECODE is set (as in the Docker image):
## the workflow sandbox imports the workflow modules again for every new workflow, and without .pyc files
## it compiles them from source each time. Quick when they are up to date.
bytecode: $(STAMP)
	@$(PY) -m compileall -q common activities workflows sandbox worker.py starter.py receiver.py

## Debian's Chromium headless shell for tests/test_web_ui*.py (a real browser on the Web UI), when missing
## and we can (root with apt-get, as in CI); elsewhere those tests use /usr/bin/chromium or skip, saying why.
chromium:
	@if [ ! -x /usr/bin/chromium-headless-shell ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium-headless-shell for tests/test_web_ui.py"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; \
	fi

## Debian's Prometheus for tests/test_prometheus.py (the Prometheus metric provider against a real
## server) and for the sandbox's real p95 (sandbox/prometheus.py), when missing and we can (root with
## apt-get); elsewhere that test skips and the sandbox reads CloudWatch's Average, saying why.
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's prometheus for tests/test_prometheus.py"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; \
	fi

## Worker + (without TEMPORAL_ADDRESS) the Temporal dev server + (ROLLBACK_AWS=sandbox) the AWS sandbox.
run: $(STAMP) bytecode
	$(PY) worker.py

## Start over from a clean sandbox: deletes the sandbox's AWS state and the rollbacks' history in the data
## folder (.data, ROLLBACK_DATA_DIR), keeps your login tokens. Refuses while 'make run' runs there.
reset: $(STAMP)
	$(PY) -m sandbox --reset

## The alert receiver on :8090 (ROLLBACK_RECEIVER_PORT) for Alertmanager/Grafana/generic alerts;
## set ROLLBACK_RECEIVER_TOKEN and/or ROLLBACK_RECEIVER_HMAC_SECRET. Needs the worker's Temporal.
receiver: $(STAMP)
	$(PY) receiver.py

## All tests, offline: starts its own Temporal servers, moto and endpoints (and a headless Chromium).
## Three pytest-xdist processes by default, each with its own servers on free ports, a test file per
## process, longest files first (tests/conftest.py LONGEST_FIRST; 7.5 to 11.5 minutes on 2 cores, where the
## suite is mostly CPU-bound: 4 processes are no faster); TEST_WORKERS=0 runs the files one after another.
TEST_WORKERS ?= 3
test: $(STAMP) bytecode chromium prometheus
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

## Issue 13's targets against the sandbox on free ports, beside a bare boto3 script (docs/benchmarks.md).
## Not a test: prints a table and a verdict per target. BENCH_ARGS, e.g. "--repeat 20 --waiting 200".
bench: $(STAMP) bytecode
	$(PY) -m bench $(BENCH_ARGS)

## docs/catalog.md from the catalog's models (tests/test_catalog_reference.py fails when it is stale).
docs: $(STAMP)
	$(PY) -m common.catalog_docs > docs/catalog.md

clean:
	rm -rf $(VENV) .data .pytest_cache
