"""The docker compose stack, for real: build, start (less Grafana), load, scale, scrape, stop.

Run by `make test-stack` only: the file name matches no pattern pytest
collects by itself, so `make test` never runs it (it needs Docker and
minutes); pytest runs it when named on the command line. It fails, never
skips, when Docker is missing: whoever asked for this test asked for Docker.

The load is the README's walkthrough, a step ramp, started the way a
headless client starts one: through the Locust master's HTTP API (POST
/swarm, what the web UI's form sends). So the compose file runs exactly as
`make up` runs it: no override file, no second master configuration.
The stack runs as its own compose project on free host ports, so a stack
started with `make up` on the same machine is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dashboards import DASHBOARDS, Prometheus, load_dashboard, wait_for_every_panel

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "echolab-stacktest"
SERVERS = ("threaded", "async", "threaded-http", "async-http")
# Everything but Grafana, whose image is not needed to test the data path.
SERVICES = [*SERVERS, "locust-master", "locust-worker", "prometheus"]
WORKERS = 2
USERS = 20  # 5 per server: Locust splits them between the four user classes
STEP = {"shape_class": "StepRamp", "step_users": USERS // 2, "step_seconds": 2}
DEADLINE = 120.0  # seconds for the scrapes to show what we expect
# Seconds of load before counting failures: past the client's 10 s read
# timeout, so a request that never gets its reply shows as one.
SOAK = 25.0

TIMINGS: dict[str, float] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Compose:
    def __init__(self) -> None:
        self.ports = {
            name: free_port()
            for name in (
                "GRAFANA",
                "LOCUST_UI",
                "LOCUST_MASTER",
                "PROMETHEUS",
                "THREADED",
                "ASYNC",
                "THREADED_HTTP",
                "ASYNC_HTTP",
            )
        }
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            # Grafana is not started, but compose reads the whole file.
            "GRAFANA_ADMIN_PASSWORD": "unused-by-the-stack-test",
            "BIND_ADDRESS": "127.0.0.1",
            **{f"HOST_PORT_{name}": str(port) for name, port in self.ports.items()},
        }

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        # .env.example, not a developer's .env: the documented defaults are what we test.
        command = ["docker", "compose", "--env-file", str(ROOT / ".env.example"), *args]
        result = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def timed(self, name: str, *args: str, timeout: float = 600) -> str:
        started = time.monotonic()
        output = self.run(*args, timeout=timeout)
        TIMINGS[name] = time.monotonic() - started
        return output

    def container(self, service: str) -> dict[str, Any]:
        ids = self.run("ps", "--all", "--quiet", service).split()
        assert len(ids) == 1, f"{service}: {ids}"
        inspected: list[dict[str, Any]] = json.loads(
            subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True, check=True).stdout
        )
        return inspected[0]

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"


def require_docker() -> None:
    """Fail loudly: `make test-stack` without Docker is a broken setup, not a reason to skip."""
    if shutil.which("docker") is None:
        pytest.fail("test-stack needs Docker: `docker` is not on PATH", pytrace=False)
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.fail(f"test-stack needs a running Docker engine:\n{info.stderr}", pytrace=False)
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0:
        pytest.fail(
            f"test-stack needs Docker Compose v2 (`docker compose`):\n{version.stderr}", pytrace=False
        )


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Compose]:
    require_docker()
    compose = Compose()
    failed_before = request.session.testsfailed
    started = time.monotonic()
    try:
        compose.run("down", "--volumes", "--remove-orphans", "--timeout", "5")  # leftovers of a killed run
        compose.timed("build", "build", *SERVICES, timeout=1200)
        compose.timed("up --wait", "up", "--detach", "--wait", *SERVICES)
        yield compose
    finally:
        if request.session.testsfailed != failed_before:
            print(compose.run("ps", "--all", check=False))
            print(compose.run("logs", "--no-color", "--tail", "60", check=False))
        down = time.monotonic()
        compose.run("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        TIMINGS["down"] = time.monotonic() - down
        TIMINGS["total"] = time.monotonic() - started
        print("\ntest-stack timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))


def get_json(url: str, data: dict[str, Any] | None = None) -> Any:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=10) as response:
        return json.load(response)


def query(compose: Compose, expr: str) -> list[dict[str, Any]]:
    url = compose.url("PROMETHEUS", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    body = get_json(url)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in result}


def wait_for(what: str, check: Callable[[], tuple[bool, Any]], deadline: float = DEADLINE) -> None:
    """Poll ``check()`` (returning ``(ok, what it saw)``) until ok; fail with what it saw last."""
    end = time.monotonic() + deadline
    while True:
        ok, seen = check()
        if ok:
            return
        if time.monotonic() > end:
            pytest.fail(f"{what}: not after {deadline:.0f}s; last saw {seen!r}")
        time.sleep(1)


def test_services_are_healthy(stack: Compose) -> None:
    for service in SERVICES:
        state = stack.container(service)["State"]
        assert state["Status"] == "running", service
        assert state["Health"]["Status"] == "healthy", service


def test_servers_run_under_the_same_limits_as_non_root(stack: Compose) -> None:
    configs = {server: stack.container(server) for server in SERVERS}
    limits = {
        server: (c["HostConfig"]["NanoCpus"], c["HostConfig"]["Memory"], c["HostConfig"]["Ulimits"])
        for server, c in configs.items()
    }
    assert all(limit == limits["threaded"] for limit in limits.values()), limits
    cpus, memory, ulimits = limits["threaded"]
    assert (cpus, memory) == (1_000_000_000, 512 * 1024**2)  # .env.example's SERVER_CPUS, SERVER_MEMORY
    assert next(u["Soft"] for u in ulimits if u["Name"] == "nofile") > 10_000
    for server, config in configs.items():
        assert config["Config"]["User"] not in ("", "root", "0"), f"{server} runs as root"
        assert config["HostConfig"]["Init"] is True, server


def test_load_reaches_every_server_and_is_scraped(stack: Compose) -> None:
    stack.timed("scale", "up", "--detach", "--wait", "--no-recreate", "--scale", f"locust-worker={WORKERS}",
                "locust-worker")  # fmt: skip
    stats = stack.url("LOCUST_UI", "/stats/requests")

    def workers_connected() -> tuple[bool, Any]:
        count = get_json(stats)["worker_count"]
        return count == WORKERS, count

    wait_for(f"{WORKERS} workers connected to the master", workers_connected, 60)
    started = time.monotonic()
    answer = get_json(stack.url("LOCUST_UI", "/swarm"), {"user_count": USERS, "spawn_rate": USERS, **STEP})
    assert answer["success"], answer
    try:
        window = "[15s]"

        def servers_up() -> tuple[bool, Any]:
            seen = by(query(stack, 'up{job="echo-servers"}'), "server")
            return seen == dict.fromkeys(SERVERS, 1.0), seen

        def workers_up() -> tuple[bool, Any]:
            seen = by(query(stack, 'up{job="locust-workers"}'), "instance")
            return len(seen) == WORKERS and set(seen.values()) == {1.0}, seen

        def servers_busy() -> tuple[bool, Any]:
            expr = f'sum by (server) (rate(echo_requests_total{{outcome="ok"}}{window}))'
            seen = by(query(stack, expr), "server")
            return set(seen) == set(SERVERS) and min(seen.values()) > 0, seen

        def workers_busy() -> tuple[bool, Any]:
            expr = f'sum by (instance) (rate(echo_client_requests_total{{job="locust-workers"}}{window}))'
            seen = by(query(stack, expr), "instance")
            return len([v for v in seen.values() if v > 0]) == WORKERS, seen

        wait_for("every server scraped", servers_up)
        assert by(query(stack, 'up{job="locust-master"}'), "instance") == {"locust-master:9646": 1.0}
        wait_for(f"{WORKERS} workers discovered by DNS and scraped", workers_up)
        wait_for("every server answering", servers_busy)
        wait_for(f"{WORKERS} workers sending", workers_busy)
        TIMINGS["load seen"] = time.monotonic() - started

        def users_counted_once() -> tuple[bool, Any]:
            seen = by(query(stack, "server:echo_client_users:sum"), "server")
            return seen == dict.fromkeys(SERVERS, USERS / len(SERVERS)), seen

        # The master learns its workers' user counts from their reports.
        wait_for("the users rule counting each user once", users_counted_once, 30)
        info = by(query(stack, "echo_server_info"), "server")
        assert set(info) == set(SERVERS)
        # Every panel of every dashboard, against the stack's own Prometheus:
        # here the users come from a master and its workers, not one process.
        prometheus = Prometheus(stack.url("PROMETHEUS", ""))
        for path in DASHBOARDS:
            problems = wait_for_every_panel(prometheus, load_dashboard(path), "30s", 60, SERVERS)
            assert not problems, f"{path.name}: {problems}"
        TIMINGS["dashboards checked"] = time.monotonic() - started
        time.sleep(max(0.0, SOAK - (time.monotonic() - started)))
        time.sleep(6)  # one more scrape of every worker
        totals = {s["name"]: (s["num_requests"], s["num_failures"]) for s in get_json(stats)["stats"]}
        failures = query(stack, "sum by (server, kind) (echo_client_failures_total) > 0")
        assert not failures, (
            f"requests failed: {[(f['metric'], f['value'][1]) for f in failures]}; Locust's totals "
            f"(requests, failures): {totals}"
        )
        assert totals["Aggregated"][1] == 0, totals
    finally:
        get_json(stack.url("LOCUST_UI", "/stop"), {})


def test_servers_drain_and_exit_cleanly_on_stop(stack: Compose) -> None:
    """`docker compose stop` sends SIGTERM: every server drains and exits 0 well within the grace period."""
    stack.timed("stop servers", "stop", "--timeout", "15", *SERVERS)
    assert TIMINGS["stop servers"] < 15, "a server needed Docker's SIGKILL"
    for server in SERVERS:
        state = stack.container(server)["State"]
        assert state["ExitCode"] == 0, f"{server} exited with {state['ExitCode']}"
        log = stack.run("logs", "--no-color", server)
        # Ours: "shutting down"; gunicorn's master: "Shutting down: Master".
        assert "shutting down" in log.lower(), log
        assert "Traceback" not in log, log
