"""A real PostgreSQL for the tests (echolab.lab.postgres): where it cannot run, the tests fail, never skip."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from echolab.lab.postgres import PostgreSQL, unavailable


@contextlib.contextmanager
def ephemeral_postgres(max_connections: int) -> Iterator[PostgreSQL]:
    """A running server for the caller's block; stopped and removed after it."""
    reason = unavailable()
    if reason:
        pytest.fail(f"{reason} (make test installs it when run as root on Debian or Ubuntu)", pytrace=False)
    with PostgreSQL(max_connections) as server:
        yield server
