# Every target creates .venv when it is missing; installs resolve from constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ibf-installed

.PHONY: venv demo test test-fast test-core test-dagster test-serve test-system ui serve docs stack check-deploy bench bench-api clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ibf demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# One layer of the suite (tests/core, tests/dagster, tests/serve, tests/system); `pytest -m core` selects the same tests.
test-core test-dagster test-serve test-system: $(STAMP)
	$(BIN)/python -m pytest -q tests/$(patsubst test-%,%,$@)

ui: $(STAMP)
	$(BIN)/ibf ui

serve: $(STAMP)
	$(BIN)/ibf serve

# The manual (docs/, mkdocs.yml) on http://127.0.0.1:8001 (8000 is the API), rebuilt on every change; `make test` builds it strictly.
docs: $(STAMP)
	$(BIN)/mkdocs serve -a 127.0.0.1:8001

# The production topology as local processes (Postgres, MLflow server, code location, webserver, daemon, API).
stack: $(STAMP)
	$(BIN)/ibf stack up

# Prometheus config, alert rules and their unit tests (Debian's prometheus package brings promtool).
check-deploy:
	command -v promtool >/dev/null || (apt-get install -y -q prometheus || (apt-get update -q && apt-get install -y -q prometheus))
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_backfill.py

# The REST API under load (wrk from Debian is the load generator).
bench-api: $(STAMP)
	command -v wrk >/dev/null || (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk))
	$(BIN)/python benchmarks/bench_api.py --fresh

clean:
	rm -rf $(VENV) .ibf
