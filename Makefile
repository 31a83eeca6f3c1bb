# Two commands matter: `make run` (worker on the embedded default) and `make test`.
# Both create .venv and install everything on first use (PyPI only; no other downloads).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install chromium prometheus run receiver test docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

## Debian's Chromium for tests/test_web_ui.py (a real browser on the Web UI), when missing and we can
## (root with apt-get, as in CI); elsewhere that test skips, saying why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for tests/test_web_ui.py"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
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
run: $(STAMP)
	$(PY) worker.py

## The alert receiver on :8090 (ROLLBACK_RECEIVER_PORT) for Alertmanager/Grafana/generic alerts;
## set ROLLBACK_RECEIVER_TOKEN and/or ROLLBACK_RECEIVER_HMAC_SECRET. Needs the worker's Temporal.
receiver: $(STAMP)
	$(PY) receiver.py

## All tests, offline: starts its own Temporal servers, moto and endpoints (and a headless Chromium).
test: $(STAMP) chromium prometheus
	$(PY) -m pytest

## docs/catalog.md from the catalog's models (tests/test_catalog_reference.py fails when it is stale).
docs: $(STAMP)
	$(PY) -m common.catalog_docs > docs/catalog.md

clean:
	rm -rf $(VENV) .data .pytest_cache
