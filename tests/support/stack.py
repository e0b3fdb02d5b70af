"""The docker compose stack as `make test-stack` drives it: its own project, free ports, Prometheus, Locust.

The stack runs as its own compose project on free host ports, so a stack
started with `make up` on the same machine is left alone; with
.env.example's settings, not a developer's .env: the documented defaults are
what is tested.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from echolab import catalogue
from echolab.deploy.stack import SECRETS_FOLDER_VARIABLE

from .waiting import poll_until

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "echolab-stacktest"
SERVERS = catalogue.NAMES
# Everything but Grafana, whose image is not needed to test the data path.
SERVICES = [*SERVERS, "postgres", "downstream", "locust-master", "locust-worker", "prometheus"]
_PROMETHEUS = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
SCRAPE = float(_PROMETHEUS["global"]["scrape_interval"].removesuffix("s"))  # seconds
DEADLINE = 120.0  # seconds for the scrapes to show what we expect
WORKERS = 2
USERS = 20  # 5 per server: Locust splits them between the four user classes
# The stack's walkthrough (docs/stack.md): a step ramp, started the way the web UI starts one (POST /swarm).
STEP = {"shape_class": "StepRamp", "step_users": USERS // 2, "step_seconds": 2}
# An open loop (Locust's --target-rps, set in the form as a user would), so that every panel has
# data, the open loop's "offered vs achieved" too: 100 requests/s in all, 25 per server, half of
# what 5 users per server could carry in a closed loop at the servers' 100 ms.
OPEN_LOOP = {"target_rps": 100}
# Each user waits for its reply (and a TCP user keeps one connection): a loop that serialises shows
# at once, and the servers' connections count the users.
CLOSED_LOOP = {"target_rps": 0}

TIMINGS: dict[str, float] = {}  # printed when the stack goes down
COMPOSE = ["docker", "compose", "--env-file", str(ROOT / ".env.example")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_network() -> str:
    """The first three numbers of a /24 no Docker network of this machine uses (STACK_NETWORK):
    a stack of `make up` keeps its own, .env.example's 172.16.90 by default."""
    ids = subprocess.run(
        ["docker", "network", "ls", "--quiet"], capture_output=True, text=True
    ).stdout.split()
    used = set()
    for network in json.loads(subprocess.run(["docker", "network", "inspect", *ids], capture_output=True,
                                             text=True).stdout or "[]"):  # fmt: skip
        for config in (network.get("IPAM") or {}).get("Config") or []:
            used.add(config.get("Subnet", "").rsplit(".", 1)[0])
    return next(f"172.16.{n}" for n in range(200, 255) if f"172.16.{n}" not in used)


class Compose:
    """``docker compose`` for the test's project, on free host ports and a network of its own."""

    def __init__(self, secrets: Path) -> None:
        self.secrets = secrets  # the passwords' files, `make check-env` writes them
        names = ["GRAFANA", "LOCUST_UI", "LOCUST_MASTER", "PROMETHEUS"]
        self.ports = {name: free_port() for name in [*names, *(s.env_name for s in catalogue.SERVERS)]}
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "STACK_NETWORK": free_network(),
            "COMPOSE_PROFILES": "",  # no Grafana
            "COMPOSE_FILE": "docker-compose.yml",  # no override a developer may have
            SECRETS_FOLDER_VARIABLE: str(secrets),  # not a developer's
            "BIND_ADDRESS": "127.0.0.1",
            **{f"HOST_PORT_{name}": str(port) for name, port in self.ports.items()},
        }

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return self._run([*COMPOSE, *args], timeout, check)

    def make(self, *args: str, timeout: float = 600) -> str:
        """A target of the Makefile on this project, as a user runs it (``.env``: .env.example's)."""
        # -o .env: .env.example stands in for it, as for compose; no .env is written into the checkout.
        return self._run(
            ["make", "--no-print-directory", "-o", ".env", *args, f"COMPOSE={' '.join(COMPOSE)}"]
        )

    def _run(self, command: list[str], timeout: float = 600, check: bool = True) -> str:
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

    def ids(self, service: str) -> list[str]:
        return self.run("ps", "--all", "--quiet", service).split()

    def container(self, service: str) -> dict[str, Any]:
        ids = self.ids(service)
        assert len(ids) == 1, f"{service}: {ids}"
        return inspect(ids[0])

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def locust(self, path: str, form: dict[str, Any] | None = None) -> Any:
        return get_json(self.url("LOCUST_UI", path), form)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.url("PROMETHEUS", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        body = get_json(url)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@dataclass(frozen=True)
class Load:
    """The stack with USERS users running on WORKERS workers since ``started`` (time.monotonic())."""

    stack: Compose
    started: float


def swarm(stack: Compose, form: dict[str, Any]) -> None:
    """Start USERS users as the web UI's form does (POST /swarm) and wait until they all run."""
    answer = stack.locust("/swarm", {"user_count": USERS, "spawn_rate": USERS, **STEP, **form})
    assert answer["success"], answer

    def running() -> tuple[bool, Any]:
        stats = stack.locust("/stats/requests")
        return stats["state"] == "running" and stats["user_count"] == USERS, (
            stats["state"],
            stats["user_count"],
        )

    wait_for(f"the step ramp up to {USERS} users", running, 60)


def stop_swarm(stack: Compose) -> None:
    stack.locust("/stop", {})
    wait_for("Locust stopped", lambda: (stack.locust("/stats/requests")["state"] == "stopped", None), 30)


def settled(stack: Compose, window: str) -> tuple[bool, Any]:
    """Whether every server has served ``window`` (``"30s"``) without a restart and its users counted
    no failure in it: rates over it are of the servers as they are.

    Each server's count must have been scraped over the whole window and one scrape before it. rate()
    extrapolates a series to the window's start only from a sample near that start, and only as far
    back as the count reaching zero: a count first scraped inside the window, or born just before it,
    reads as answering less than its users sent (5-11% under a 30 s window, the first CI runs).
    """
    seconds = float(window.removesuffix("s")) + SCRAPE
    answered = f'echo_requests_total{{outcome="ok"}}[{seconds:g}s]'
    samples = by(stack.query(f"min by (server) (count_over_time({answered}))"), "server")
    resets = by(stack.query(f"max by (server) (resets({answered}))"), "server")
    failed = by(
        stack.query(f"sum by (server) (increase(echo_client_failures_total[{window}])) > 0"), "server"
    )
    full = seconds // SCRAPE  # a sample at each scrape of the window and the one before it
    ok = set(samples) == set(resets) == set(SERVERS) and min(samples.values()) >= full
    return ok and max(resets.values()) == 0 and not failed, (samples, resets, failed)


def failures(stack: Compose) -> dict[tuple[str, ...], float]:
    """Failed requests by (server, kind), as the workers counted them and Prometheus last scraped them."""
    return by_labels(stack.query("sum by (server, kind) (echo_client_failures_total)"), "server", "kind")


def answered_and_sent(stack: Compose, window: str) -> tuple[dict[str, float], dict[str, float]]:
    """Requests/s over ``window``, per server: answered as the server counts them, sent as its users do.

    A user talking to another class's server moves its requests from one
    server's count to the other's, while its class's count stays.
    """
    answered = by(
        stack.query(f'sum by (server) (rate(echo_requests_total{{outcome="ok"}}[{window}]))'), "server"
    )
    sent = by(
        stack.query(f'sum by (server) (rate(echo_client_requests_total{{job="locust-workers"}}[{window}]))'),
        "server",
    )
    return answered, sent


def users_per_server(stack: Compose) -> tuple[bool, Any]:
    """Each server has its share of the users, counted once (the master's count, not its workers' too)."""
    seen = by(stack.query("server:echo_client_users:sum"), "server")
    return seen == dict.fromkeys(SERVERS, USERS / len(SERVERS)), seen


def inspect(container: str) -> dict[str, Any]:
    done = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True)
    inspected: list[dict[str, Any]] = json.loads(done.stdout)
    return inspected[0]


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


def get_json(url: str, data: dict[str, Any] | None = None) -> Any:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=10) as response:
        return json.load(response)


def by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in result}


def by_labels(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"].get(label, "") for label in labels): float(s["value"][1]) for s in result}


def wait_for(what: str, check: Callable[[], tuple[bool, Any]], deadline: float = DEADLINE) -> Any:
    """Poll ``check()`` (returning ``(ok, what it saw)``) every second until ok, and return what it saw;
    fail with what it saw last."""
    ok_and_seen = poll_until(check, lambda result: result[0], what=what, timeout=deadline, interval=1.0)
    return ok_and_seen[1]
