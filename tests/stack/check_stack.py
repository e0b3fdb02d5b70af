"""The docker compose stack, for real: build, start (less Grafana), harden, load, scale, scrape.

Run by `make test-stack` only, with check_chaos.py after it on the same
stack (tests/stack/conftest.py): the file names match no pattern pytest
collects by itself, so `make test` never runs them (they need Docker and
minutes); pytest runs them when named on the command line. They fail, never
skip, when Docker is missing: whoever asked for them asked for Docker.

The load is the stack's walkthrough (docs/stack.md), a step ramp, started the way a
headless client starts one: through the Locust master's HTTP API (POST
/swarm, what the web UI's form sends). So the compose file runs exactly as
`make up` runs it: no override file, no second master configuration.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from support.dashboards import DASHBOARDS, Prometheus, load_dashboard, split_row, wait_for_every_panel
from support.stack import (
    PROJECT,
    SERVERS,
    SERVICES,
    TIMINGS,
    USERS,
    WORKERS,
    Compose,
    Load,
    by,
    users_per_server,
    wait_for,
)  # fmt: skip

from echolab import catalogue
from echolab.dashboards.overview import DEPENDENCIES

# Seconds of load before counting failures: past the client's 10 s read
# timeout, so a request that never gets its reply shows as one.
SOAK = 25.0
OURS = [*SERVERS, "downstream", "locust-master", "locust-worker"]  # built from the Dockerfile, read-only


def test_services_are_healthy(stack: Compose) -> None:
    for service in SERVICES:
        state = stack.container(service)["State"]
        assert state["Status"] == "running", service
        assert state["Health"]["Status"] == "healthy", service


def test_servers_run_under_the_same_limits(stack: Compose) -> None:
    configs = {server: stack.container(server)["HostConfig"] for server in SERVERS}
    limits = {
        server: (c["NanoCpus"], c["Memory"], c["MemorySwap"], c["PidsLimit"], c["Ulimits"])
        for server, c in configs.items()
    }
    assert all(limit == limits["threaded"] for limit in limits.values()), limits
    cpus, memory, swap, pids, ulimits = limits["threaded"]
    assert (cpus, memory) == (1_000_000_000, 512 * 1024**2)  # .env.example's SERVER_CPUS, SERVER_MEMORY
    assert swap == memory, "no swap beyond the memory limit"
    assert pids > 20_000, "a thread per connection for the threaded server"
    assert next(u["Soft"] for u in ulimits if u["Name"] == "nofile") > 10_000


def test_containers_are_hardened(stack: Compose) -> None:
    # The passwords are secret files: no container's configuration (`docker inspect`) shows one.
    passwords = [path.read_text().strip() for path in stack.secrets.iterdir()]
    for service in SERVICES:
        container = stack.container(service)
        shown = " ".join(container["Config"]["Env"] or [])
        assert not [p for p in passwords if p in shown], f"{service}: a password in its environment"
        host = container["HostConfig"]
        assert host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert host["PidsLimit"] > 0, service
        assert container["Config"]["User"] not in ("", "root", "0"), f"{service} runs as root"
    assert stack.container("postgres")["HostConfig"]["ReadonlyRootfs"] is True, "postgres"
    for service in OURS:
        container = stack.container(service)
        assert container["HostConfig"]["ReadonlyRootfs"] is True, service
        assert container["HostConfig"]["Init"] is True, service
        assert container["Config"]["Image"].startswith(f"{PROJECT}-"), "images named after the project"
    # Only remote workers need the master's port: the default stack does not publish it.
    assert "5557/tcp" not in stack.container("locust-master")["HostConfig"]["PortBindings"]


def test_load_reaches_every_server_and_is_scraped(load: Load) -> None:
    stack = load.stack
    window = "[15s]"

    def servers_up() -> tuple[bool, Any]:
        seen = by(stack.query('up{job="echo-servers"}'), "server")
        return seen == dict.fromkeys(SERVERS, 1.0), seen

    def workers_up() -> tuple[bool, Any]:
        seen = by(stack.query('up{job="locust-workers"}'), "instance")
        return len(seen) == WORKERS and set(seen.values()) == {1.0}, seen

    def servers_busy() -> tuple[bool, Any]:
        expr = f'sum by (server) (rate(echo_requests_total{{outcome="ok"}}{window}))'
        seen = by(stack.query(expr), "server")
        return set(seen) == set(SERVERS) and min(seen.values()) > 0, seen

    def workers_busy() -> tuple[bool, Any]:
        expr = f'sum by (instance) (rate(echo_client_requests_total{{job="locust-workers"}}{window}))'
        seen = by(stack.query(expr), "instance")
        return len([v for v in seen.values() if v > 0]) == WORKERS, seen

    wait_for("every server scraped", servers_up)
    assert by(stack.query('up{job="locust-master"}'), "instance") == {"locust-master:9646": 1.0}
    assert by(stack.query('up{job="downstream"}'), "instance") == {"downstream:8004": 1.0}
    wait_for(f"{WORKERS} workers discovered by DNS and scraped", workers_up)
    wait_for("every server answering", servers_busy)
    wait_for(f"{WORKERS} workers sending", workers_busy)
    TIMINGS["load seen"] = time.monotonic() - load.started
    # The master learns its workers' user counts from their reports.
    wait_for("the users rule counting each user once", lambda: users_per_server(stack), 30)
    info = by(stack.query("echo_server_info"), "server")
    assert set(info) == set(SERVERS)
    # Each user class shows its real target (the class picker lists them), not a warning.
    with urllib.request.urlopen(stack.url("LOCUST_UI", "/"), timeout=10) as response:
        page = response.read().decode()
    for server in catalogue.SERVERS:
        assert f"{'http' if server.transport == 'http' else 'tcp'}://{server.name}:9090" in page
    # Every panel of every dashboard, against the stack's own Prometheus:
    # here the users come from a master and its workers, not one process. The dependencies' row
    # has data once the servers call one: check_scenarios.py checks it under db and api.
    prometheus = Prometheus(stack.url("PROMETHEUS", ""))
    for path in DASHBOARDS:
        wait_for_every_panel(prometheus, split_row(load_dashboard(path), DEPENDENCIES)[0], "30s", 60, SERVERS)
    TIMINGS["dashboards checked"] = time.monotonic() - load.started
    time.sleep(max(0.0, SOAK - (time.monotonic() - load.started)))
    time.sleep(6)  # one more scrape of every worker
    stats = stack.locust("/stats/requests")["stats"]
    totals = {s["name"]: (s["num_requests"], s["num_failures"]) for s in stats}
    failures = stack.query("sum by (server, kind) (echo_client_failures_total) > 0")
    assert not failures, (
        f"requests failed: {[(f['metric'], f['value'][1]) for f in failures]}; Locust's totals "
        f"(requests, failures): {totals}"
    )
    assert totals["Aggregated"][1] == 0, totals
    assert stack.locust("/stats/requests")["user_count"] == USERS
