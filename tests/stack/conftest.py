"""The stack for `make test-stack`: built and started once for both of its modules, loaded, always torn down.

Nothing here runs in `make test`: its modules (check_*.py) match no pattern
pytest collects by itself, and these fixtures run only when asked for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.stack import (
    OPEN_LOOP,
    SERVICES,
    TIMINGS,
    WORKERS,
    Compose,
    Load,
    require_docker,
    swarm,
    wait_for,
)


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    require_docker()
    compose = Compose(secrets=tmp_path_factory.mktemp("stack") / "secrets")
    compose.make("check-env")  # the passwords, written as `make up` writes them
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


@pytest.fixture(scope="session")
def load(stack: Compose) -> Iterator[Load]:
    """WORKERS workers running USERS users, spread over every server, until the last test is done."""
    stack.timed("scale", "up", "--detach", "--wait", "--no-recreate", "--scale", f"locust-worker={WORKERS}",
                "locust-worker")  # fmt: skip

    def workers_connected() -> tuple[bool, Any]:
        count = stack.locust("/stats/requests")["worker_count"]
        return count == WORKERS, count

    wait_for(f"{WORKERS} workers connected to the master", workers_connected, 60)
    swarm(stack, OPEN_LOOP)
    try:
        yield Load(stack, time.monotonic())
    finally:
        stack.locust("/stop", {})
