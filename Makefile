# echolab: `make demo` runs the comparison, `make test` the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test prometheus-tools postgresql lint docs bench soak demo dashboards clean

# V=1 shows what the quiet targets (install, up) keep in their logs.
V ?=
install: $(VENV)/.installed

# One line, and pip's log in .venv/install.log (its tail if it fails; V=1: on the terminal).
$(VENV)/.installed: pyproject.toml
	@echo "installing echolab and its tools (Locust, matplotlib, the linters) into $(VENV): once, about a minute"
	@$(PYTHON) -m venv $(VENV) && { $(BIN)/pip install --upgrade pip \
	  && $(BIN)/pip install -e '.[dev,loadtest,report,deploy]'; } $(if $(V),,> $(VENV)/install.log 2>&1) \
	  || { $(if $(V),,tail -n 30 $(VENV)/install.log;) echo "make install failed (log: $(VENV)/install.log)" >&2; exit 1; }
	@touch $@

# The suite mostly waits on servers and clients: more workers than cores
# (tests/conftest.py says which tests run together, and the groups start in the
# order of the files: the lab's long ones first). It starts Python hundreds of
# times: each reuses the bytecode the first compiled, PYTHONDONTWRITEBYTECODE or not.
# The 10 slowest tests close every run, so that a slow one shows.
TEST_WORKERS ?= 6
test: install prometheus-tools postgresql
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder \
	  --durations=10

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

# The tests run a real PostgreSQL from the system's binaries (src/echolab/lab/postgres.py finds
# them). As root on Debian or Ubuntu this installs the distribution's package; elsewhere it says what to do.
postgresql: install
	@if ! $(BIN)/python -m echolab.lab.postgres >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing PostgreSQL (Debian package postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  fi; \
	  $(BIN)/python -m echolab.lab.postgres >/dev/null || exit 1; \
	fi

lint: install
	$(BIN)/ruff check src tests loadtest
	$(BIN)/ruff format --check src tests loadtest
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-logo
	@# Not --quiet: with it mkdocs 1.6 counts no warnings, and --strict passes a broken link.
	$(BIN)/mkdocs build --strict

# The manual (docs/, mkdocs.yml) as a site in site/; .venv/bin/mkdocs serve to browse it while editing.
docs: install
	$(BIN)/mkdocs build --strict
	@echo "the manual: $(CURDIR)/site/index.html"

# The Grafana dashboards, built with Grafana's Foundation SDK from src/echolab/dashboards/
# into grafana/dashboards/*.json (committed: provisioning needs no build step).
dashboards: install
	$(BIN)/python -m echolab.dashboards.build grafana/dashboards

# The comparison, natively: every server under every scenario, a closed-loop
# sweep of rising concurrency and an open-loop one of rising offered rates, a
# report in reports/. DEMO_ARGS="--quick" for a shorter run, "--scenario io" for
# one workload; see `echolab demo --help`. Ctrl-C keeps what was measured.
demo: install
	$(BIN)/echolab demo $(DEMO_ARGS)

# Every server at the levels where they differ; prints a table, writes reports/bench-*.json.
bench: install
	$(BIN)/echolab suite $(BENCH_ARGS)

# Every server under a steady load for 10 minutes: RSS, fds and threads at start
# and end; growth beyond noise exits 1. SOAK_ARGS="--duration 60" for a short one.
soak: install
	$(BIN)/echolab soak $(SOAK_ARGS)

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
# The run's exit status: 3 when more than this share of requests failed (docs/locust.md).
LOADTEST_MAX_FAIL_RATIO ?= 0.01

.PHONY: locust loadtest

# Web UI on http://127.0.0.1:$(LOCUST_WEB_PORT): pick the users (any of the servers) and a shape.
locust: install
	$(BIN)/python -m echolab.lab.locust_local -f $(LOCUSTFILES) --class-picker --web-port $(LOCUST_WEB_PORT)

# Headless step ramp (+STEP_USERS every STEP_SECONDS up to LOADTEST_USERS, shared
# by the four servers' users, each step started within a second: -r) for
# LOADTEST_TIME. With the defaults every server holds: 50 users each stay far
# below the threaded knee (1,000-2,000 connections), which one Locust process on
# the servers' own cores cannot reach.
# It shows Locust's view of a healthy ramp; `make demo` shows the knees. It ends by itself,
# exiting 0 or with the thresholds' verdict.
loadtest: install
	mkdir -p reports
	$(BIN)/python -m echolab.lab.locust_local -f loadtest/locustfile.py,loadtest/step_ramp.py --headless \
	  -u $(LOADTEST_USERS) -r $(STEP_USERS) -t $(LOADTEST_TIME) \
	  --step-users $(STEP_USERS) --step-seconds $(STEP_SECONDS) \
	  --max-fail-ratio $(LOADTEST_MAX_FAIL_RATIO) --html reports/locust.html --csv reports/locust --only-summary
	@echo "Locust report: $(CURDIR)/reports/locust.html (stats: reports/locust_stats.csv)"
	@echo "$(LOADTEST_USERS) users shared by the four servers' user classes; the threaded server's knee is at" \
	  "1,000-2,000 connections of its own (make demo)."

# --- the containerized stack: docker-compose.yml ---------------------------------
COMPOSE  ?= docker compose
# Services for up/logs; empty means all (Grafana only while COMPOSE_PROFILES in
# .env names it). E.g. SERVICES="threaded async prometheus".
SERVICES ?=
WORKERS  ?= 4

.PHONY: generate up check-env urls down logs ps scale scenario report test-stack

# docker-compose.yml, its overlay and .env.example are rendered from the code
# (src/echolab/deploy/); a test fails until they are regenerated.
generate: install
	$(BIN)/python -m echolab.deploy

# The first stack command writes .env from .env.example, readable by its owner only.
.env:
	@umask 077 && cp .env.example $@
	@echo "wrote .env from .env.example (mode 0600): edit it for limits and ports"

# The stack's passwords, each a file compose mounts into the containers that need it (a compose
# secret), written at random on first use into .env's SECRETS_FOLDER. The folder is its owner's
# only; the files are readable by all, as each container's own user reads its file through a bind
# mount, where the folder's mode does not reach.
SECRETS_FOLDER ?= $(or $(shell sed -n 's/^SECRETS_FOLDER=//p' .env 2>/dev/null | tail -1),secrets)
SECRETS := grafana-admin-password postgres-password
SECRET_FILES := $(addprefix $(SECRETS_FOLDER)/,$(SECRETS))
$(SECRET_FILES):
	@mkdir -p -m 0700 $(SECRETS_FOLDER) && umask 022 \
	  && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(18))' > $@.new && mv $@.new $@
	@echo "wrote $@ (a random password)"

# Refuses an empty password file, which compose would mount as it is.
check-env: .env $(SECRET_FILES)
	@for file in $(SECRET_FILES); do \
	  [ -s "$$file" ] || { echo "make up: $$file is empty; delete it and make up writes a random one" >&2; exit 1; }; \
	done

# Quiet: the build's log goes to $(BUILD_LOG) (its tail if it fails; V=1: on the terminal), then
# compose's progress while every service starts and turns healthy, then the URLs.
# One service builds each image: compose labels an image with the service that built it, so the
# four servers building echolab-server left a new image each time, and every make up, changed or
# not, recreated the servers under their users.
BUILD_LOG ?= reports/build.log
ONE_PER_IMAGE := import json, sys; s = json.load(sys.stdin)["services"]; \
  print(*sorted({v["image"]: k for k, v in sorted(s.items(), reverse=True) if "build" in v}.values()))
up: check-env
	@mkdir -p $(dir $(BUILD_LOG)) && echo "building the images$(if $(V),, (log: $(BUILD_LOG)))"
	@builders=$$($(COMPOSE) config --format json $(SERVICES) | $(PYTHON) -c '$(ONE_PER_IMAGE)') \
	  && $(COMPOSE) $(if $(V),,--progress plain) build $$builders $(if $(V),,> $(BUILD_LOG) 2>&1) \
	  || { $(if $(V),,tail -n 30 $(BUILD_LOG);) echo "make up: the build failed (log: $(BUILD_LOG))" >&2; exit 1; }
	@echo "starting the stack, waiting until every service is healthy"
	@$(COMPOSE) up --detach --wait $(SERVICES)
	@$(MAKE) --no-print-directory urls

urls: .env
	@for s in "grafana 3000 Grafana" "locust-master 8089 Locust" "prometheus 9090 Prometheus"; do \
	  set -- $$s; a=$$($(COMPOSE) port $$1 $$2 2>/dev/null) && [ "$${a##*:}" -gt 0 ] 2>/dev/null && echo "$$3: http://$$a/"; \
	done; \
	a=$$($(COMPOSE) port locust-master 5557 2>/dev/null) && [ "$${a##*:}" -gt 0 ] 2>/dev/null \
	  && echo "Locust master, for remote workers: $$a"; \
	for s in $$($(COMPOSE) config --services 2>/dev/null); do \
	  a=$$($(COMPOSE) port $$s 9090 2>/dev/null) && [ "$${a##*:}" -gt 0 ] 2>/dev/null && [ "$$s" != prometheus ] \
	    && echo "echo server $$s: $$a"; \
	done; true

down: .env
	$(COMPOSE) down

logs: .env
	$(COMPOSE) logs --follow --tail=100 $(SERVICES)

ps: .env
	$(COMPOSE) ps

scale: .env $(SECRET_FILES)
	$(COMPOSE) up --detach --wait --no-recreate --scale locust-worker=$(WORKERS) locust-worker

# The servers recreated under a scenario's work model (`echolab scenario --help` lists them),
# e.g. make scenario NAME=blocking; Locust, Prometheus and Grafana run on. The preset sets
# the whole work model over .env's; NAME=io is the default workload, `make up` goes back to .env.
# All at once: each server has a fixed address on the stack's network (src/echolab/deploy/stack.py),
# so none can come back at another's.
scenario: install .env $(SECRET_FILES)
	@environment=$$($(BIN)/echolab scenario $(NAME)) && services=$$($(BIN)/echolab scenario $(NAME) --services) \
	  && echo "scenario $(NAME):" $$environment \
	  && env $$environment $(COMPOSE) up --detach --no-deps --force-recreate --wait $$services

# Every dashboard panel drawn from the stack's Prometheus into reports/stack-<time>.html (no
# Grafana needed): attach it to a PR or a ticket. The window: the last load-test run, and a
# little around it; REPORT_SINCE=2h, the last two hours instead.
REPORT_SINCE ?=
report: install .env
	@address=$$($(COMPOSE) port prometheus 9090 2>/dev/null) && [ -n "$$address" ] || \
	  { echo "make report: the stack's Prometheus is not running (make up)" >&2; exit 1; }; \
	$(BIN)/echolab report --prometheus "http://$$address" $(if $(REPORT_SINCE),--since $(REPORT_SINCE))

# Builds and runs the stack (less Grafana) under its own project name, free
# ports and network, loads it, checks Prometheus sees it all, switches the
# servers to the blocking scenario and back (make scenario), then to db and api,
# where each queries the postgres container or calls the downstream one, recreates all four
# twice and counts each one's users, then faults under load (servers killed, a
# worker lost, servers stopped); always tears it down.
# Needs Docker: fails, never skips, without it.
test-stack: install
	$(BIN)/pytest tests/stack/check_stack.py tests/stack/check_scenarios.py \
	  tests/stack/check_chaos.py \
	  --timeout=1800 -s

# --- Kubernetes: deploy/kubernetes (rendered by `make generate`) -------------------
OVERLAY ?= local

.PHONY: k8s

# Every object of an overlay (local, large) or of base, as `kubectl apply -k` would send it.
k8s: install
	@$(BIN)/python -m echolab.deploy.kustomize $(if $(filter base,$(OVERLAY)),deploy/kubernetes/base,deploy/kubernetes/overlays/$(OVERLAY))

clean:
	rm -rf $(VENV) reports site .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
