"""Fixtures for the load tests: Locust in subprocesses, gone after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.locust import LOADTEST, TCP_USERS, LocustProcess


@pytest.fixture
def locust(tmp_path: Path) -> Iterator[Callable[..., LocustProcess]]:
    """``locust(*args, files=, name=, stats=, users=)`` starts Locust; all are gone after the test.

    ``stats``: write the final stats as JSON; without, Locust prints its error report instead.
    ``users``: the user classes to run (the locustfile has four; by default the two TCP ones).
    """
    started: list[LocustProcess] = []

    def start(
        *args: str,
        files: str = "locustfile.py",
        name: str = "locust",
        stats: bool = True,
        users: tuple[str, ...] = TCP_USERS,
    ) -> LocustProcess:
        locustfiles = ",".join(str(LOADTEST / f) for f in files.split(","))
        argv = ["-f", locustfiles, *(["--json-file", str(tmp_path / name)] if stats else []), *args]
        started.append(LocustProcess(argv, tmp_path, name, users))
        return started[-1]

    yield start
    for process in started:
        process.kill()
    broken = [process.log for process in started if "Traceback" in process.log]
    if broken:
        pytest.fail("traceback in a Locust log:\n" + "\n".join(broken), pytrace=False)
