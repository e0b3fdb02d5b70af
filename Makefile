# echolab: `make demo` runs the comparison, `make test` the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test prometheus-tools lint bench demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,loadtest,report]'
	touch $@

test: install prometheus-tools
	$(BIN)/pytest

# The monitoring tests run a real Prometheus and promtool. As root on Debian or
# Ubuntu this installs the distribution's package; elsewhere it says what to do.
prometheus-tools:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Prometheus and promtool (Debian package prometheus)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else \
	    echo "make test needs prometheus and promtool on PATH: sudo apt-get install prometheus" \
	      "(Debian/Ubuntu) or brew install prometheus (macOS)" >&2; exit 1; \
	  fi; \
	fi

lint: install
	$(BIN)/ruff check src tests loadtest
	$(BIN)/ruff format --check src tests loadtest
	$(BIN)/mypy src

# The comparison, natively: every server under every scenario, a closed-loop
# sweep of rising concurrency and an open-loop one of rising offered rates, a
# report in reports/. DEMO_ARGS="--quick" for a shorter run, "--scenario io" for
# one workload; see `echolab demo --help`. Ctrl-C keeps what was measured.
demo: install
	$(BIN)/echolab demo $(DEMO_ARGS)

# Every server at the levels where they differ; prints a table, writes reports/bench-*.json.
bench: install
	$(BIN)/echolab benchmark $(BENCH_ARGS)

# One server in the foreground, on 127.0.0.1 at its own port (`echolab config` lists them):
# make serve-threaded, serve-async, serve-threaded-http, serve-async-http.
serve-%: install
	$(BIN)/echolab serve $*

# --- Locust, natively: every server + Locust; the servers stop with Locust ---
# Each server listens on its catalogue port (9090-9093, `echolab config`), or on
# LOCUST_THREADED_PORT, LOCUST_ASYNC_PORT, ... when set, or on a free port when
# its own is taken; the banner prints the addresses in use.
LOCUSTFILES    := loadtest/locustfile.py,loadtest/step_ramp.py,loadtest/spike.py
LOCUST_WEB_PORT ?= 8089
LOADTEST_USERS ?= 200
LOADTEST_TIME  ?= 60s
STEP_USERS     ?= 20
STEP_SECONDS   ?= 5

.PHONY: locust loadtest

# Web UI on http://127.0.0.1:$(LOCUST_WEB_PORT): pick the users (any of the servers) and a shape.
locust: install
	$(BIN)/python -m echolab.lab.locust_local -f $(LOCUSTFILES) --class-picker --web-port $(LOCUST_WEB_PORT)

# Headless step ramp (+STEP_USERS every STEP_SECONDS up to LOADTEST_USERS, shared
# by the four servers' users) for LOADTEST_TIME. With the defaults every server
# holds: 50 users each stay far below the threaded knee (1,000-2,000
# connections), which one Locust process on the servers' own cores cannot reach.
# It shows Locust's view of a healthy ramp; `make demo` shows the knees.
loadtest: install
	mkdir -p reports
	$(BIN)/python -m echolab.lab.locust_local -f loadtest/locustfile.py,loadtest/step_ramp.py --headless \
	  -u $(LOADTEST_USERS) -t $(LOADTEST_TIME) --step-users $(STEP_USERS) --step-seconds $(STEP_SECONDS) \
	  --html reports/locust.html --csv reports/locust --only-summary
	@echo "Locust report: $(CURDIR)/reports/locust.html (stats: reports/locust_stats.csv)"
	@echo "$(LOADTEST_USERS) users shared by the four servers' user classes; the threaded server's knee is at" \
	  "1,000-2,000 connections of its own (make demo)."

# --- the containerized stack: docker-compose.yml ---------------------------------
COMPOSE  ?= docker compose
# Services for up/logs; empty means all. E.g. SERVICES="threaded async prometheus".
SERVICES ?=
WORKERS  ?= 4

.PHONY: up urls down logs ps scale test-stack

# Compose refuses to start without GRAFANA_ADMIN_PASSWORD: the first stack
# command writes .env from .env.example, with a random password.
.env:
	@sed "s/^GRAFANA_ADMIN_PASSWORD=.*/GRAFANA_ADMIN_PASSWORD=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(18))')/" \
	  .env.example > $@
	@echo "wrote .env from .env.example (random Grafana admin password): edit it for limits and ports"

up: .env
	$(COMPOSE) up --detach --build --wait $(SERVICES)
	@$(MAKE) --no-print-directory urls

urls: .env
	@for s in "grafana 3000 Grafana" "locust-master 8089 Locust" "prometheus 9090 Prometheus"; do \
	  set -- $$s; a=$$($(COMPOSE) port $$1 $$2 2>/dev/null) && [ -n "$$a" ] && echo "$$3: http://$$a/"; \
	done; \
	for s in "threaded 9090" "async 9090" "threaded-http 9090" "async-http 9090"; do \
	  set -- $$s; a=$$($(COMPOSE) port $$1 $$2 2>/dev/null) && [ -n "$$a" ] && echo "echo server $$1: $$a"; \
	done; true

down: .env
	$(COMPOSE) down

logs: .env
	$(COMPOSE) logs --follow --tail=100 $(SERVICES)

ps: .env
	$(COMPOSE) ps

scale: .env
	$(COMPOSE) up --detach --wait --no-recreate --scale locust-worker=$(WORKERS) locust-worker

# Builds and runs the stack (less Grafana) under its own project name and
# free ports, loads it, checks Prometheus sees it all, always tears it down.
# Needs Docker: fails, never skips, without it.
test-stack: install
	$(BIN)/pytest tests/stack/check_stack.py --timeout=1800 -s

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache .hypothesis
