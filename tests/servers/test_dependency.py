"""The request's IO as a real dependency (--io postgres, --io http), in every server, through real drivers.

Every test runs real servers against the session's real PostgreSQL (or one
of its own, to stop and start) and a real ``echolab downstream``. No test
asserts a time: replies, counts, and how many calls were in progress at
once (PostgreSQL's pg_stat_activity, the downstream's peak gauge).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import psycopg
import psycopg_pool
import pytest
import requests
from support.scrape import Metrics, scrape
from support.servers import TestServer, clean_environment, settled

from echolab.lab.downstream import DownstreamProcess
from echolab.lab.postgres import PostgreSQL
from echolab.protocol import ERROR_DEPENDENCY
from echolab.settings import LIBRARY_POOL_SIZES

# Every server, each model and API: (id, flags).
SERVERS = {
    "threaded-thread-per-connection": ("threaded", "--model", "thread-per-connection"),
    "threaded-pool": ("threaded", "--model", "pool"),
    "threaded-serial": ("threaded", "--model", "serial"),
    "async-streams": ("async", "--api", "streams"),
    "async-protocol": ("async", "--api", "protocol"),
    "threaded-http": ("threaded-http", "--workers", "1"),
    "async-http": ("async-http", "--workers", "1"),
}
# The other driver, where a server can take it.
ASYNCPG = {
    f"{name}-asyncpg": (*flags, "--db-driver", "asyncpg")
    for name, flags in SERVERS.items()
    if name in ("async-streams", "async-protocol", "async-http")
}
REQUESTS = {
    f"{name}-requests": (*flags, "--http-client", "requests")
    for name, flags in SERVERS.items()
    if name in ("threaded-pool", "threaded-http")
}
SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name = %s AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'"
)


def app_url(postgres: PostgreSQL, name: str) -> str:
    """The database's URL, naming the server's sessions in pg_stat_activity (both drivers pass it on)."""
    return f"{postgres.dsn}?application_name={name}"


def ask(server: TestServer, message: bytes = b"hello") -> str:
    """One request on a connection of its own: ok (the right reply), dependency (its error), or what came."""
    if server.framing == "http":
        response = server.request("POST", "/echo", message)  # type: ignore[attr-defined]
        got = (response.status, response.body)
        if got == (200, message.upper()):
            return "ok"
        return "dependency" if got == (503, ERROR_DEPENDENCY) else repr(got)
    reply = server.exchange(message)
    if reply == message.upper() + b"\n":
        return "ok"
    return "dependency" if reply == ERROR_DEPENDENCY else repr(reply)


def ask_all(server: TestServer, count: int) -> list[str]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: ask(server, b"request %d" % i), range(count)))


@pytest.fixture(scope="module")
def downstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DownstreamProcess]:
    """An echolab downstream that the module's tests share."""
    log = tmp_path_factory.mktemp("downstream") / "downstream.log"
    process = DownstreamProcess(log=log, env=clean_environment()).start()
    yield process
    assert process.stop() == 0, process.log
    assert "Traceback" not in process.log, process.log


@pytest.fixture
def own_downstream(tmp_path: Path) -> Iterator[Callable[[], DownstreamProcess]]:
    """``own_downstream()``: a downstream of the test's own, not started (its peak is the test's)."""
    made: list[DownstreamProcess] = []

    def make() -> DownstreamProcess:
        made.append(DownstreamProcess(log=tmp_path / f"downstream-{len(made)}.log", env=clean_environment()))
        return made[-1]

    yield make
    for process in made:
        if process.running():
            assert process.stop() == 0, process.log
        assert "Traceback" not in process.log, process.log


def downstream_count(process: DownstreamProcess, name: str) -> float:
    return scrape(process.metrics_url).value(name, **({"code": "200"} if name.endswith("_total") else {}))


def assert_dependency_metrics(after: Metrics, delta: Metrics, calls: int, pool_size: int) -> None:
    """``calls`` calls done, each having had its connection, none failed, none holding one now."""
    expected = {
        "echo_dependency_pool_wait_seconds_count": calls,
        "echo_dependency_errors_total": 0,
        'echo_requests_total{outcome="ok"}': calls,
    }
    assert delta.counts(expected) == expected
    held = {"echo_dependency_connections_in_use": 0, "echo_dependency_pool_size": pool_size}
    assert after.counts(held) == held


# --- every server, both dependencies --------------------------------------------------------


@pytest.mark.parametrize("flags", [*SERVERS.values(), *ASYNCPG.values()], ids=[*SERVERS, *ASYNCPG])
def test_every_server_answers_through_postgres(start_server, postgres, flags):
    name = flags[0].replace("-", "_") + "_" + str(len(flags))
    server = start_server(
        *flags, "--io", "postgres", "--database-url", app_url(postgres, name), "--delay-ms", "50"
    )
    before = server.scrape()
    count = 4
    assert ask_all(server, count) == ["ok"] * count
    delta = settled(server, before, count)
    assert delta.query('echo_work_seconds_total{kind="io"}') == pytest.approx(count * 0.05)
    after = server.scrape()
    info = after.labels("echo_server_info")
    library = "asyncpg" if "asyncpg" in flags else "psycopg"
    assert (info["io"], info["client"], info["pool_size"]) == (
        "postgres",
        library,
        str(LIBRARY_POOL_SIZES[library]),
    )
    assert_dependency_metrics(after, delta, count, LIBRARY_POOL_SIZES[library])
    # Its pool's connections are there, under the server's name.
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
    assert sessions is not None and sessions[0] >= 1


@pytest.mark.parametrize("flags", [*SERVERS.values(), *REQUESTS.values()], ids=[*SERVERS, *REQUESTS])
def test_every_server_answers_through_the_downstream(start_server, downstream, flags):
    server = start_server(*flags, "--io", "http", "--downstream-url", downstream.url, "--delay-ms", "50")
    before = server.scrape()
    calls = downstream_count(downstream, "echo_downstream_requests_total")
    count = 4
    assert ask_all(server, count) == ["ok"] * count
    delta = settled(server, before, count)
    assert delta.query('echo_work_seconds_total{kind="io"}') == pytest.approx(count * 0.05)
    after = server.scrape()
    info = after.labels("echo_server_info")
    library = "requests" if "requests" in flags else "httpx"
    assert (info["io"], info["client"]) == ("http", library)
    assert_dependency_metrics(after, delta, count, LIBRARY_POOL_SIZES[library])
    # The downstream is shared with the module's other tests, which run one at a time on this worker.
    assert downstream_count(downstream, "echo_downstream_requests_total") - calls == count


# --- the pool is the limit ------------------------------------------------------------------

POOLED = {
    "threaded": ("threaded",),
    "async-streams": ("async", "--api", "streams"),
    "async-protocol-asyncpg": ("async", "--api", "protocol", "--db-driver", "asyncpg"),
    "threaded-http": ("threaded-http", "--workers", "1"),
    "async-http": ("async-http", "--workers", "1"),
}


def most_at_once(probe: Callable[[], float], work: Callable[[], list[str]]) -> tuple[list[str], float]:
    """``work()``'s result, and the most ``probe()`` saw at once while it ran."""
    seen = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(probe())
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        return work(), max(seen)
    finally:
        done.set()
        watcher.join()


def assert_pool_was_the_limit(server: TestServer, before: Metrics, calls: int, size: int) -> None:
    """The server's own account: every call had a connection, all but the first ``size`` after waiting
    for one of those to come free (a query of the delay's length, a tenth of a second at least)."""
    delta = settled(server, before, calls)
    after = server.scrape()
    assert_dependency_metrics(after, delta, calls, size)
    waited = delta.value("echo_dependency_pool_wait_seconds_count") - delta.value(
        "echo_dependency_pool_wait_seconds_bucket", le="0.1"
    )
    assert waited >= calls - size


@pytest.mark.parametrize("flags", POOLED.values(), ids=POOLED)
def test_concurrent_queries_never_exceed_the_pool_size(start_server, postgres, flags):
    size, count = 3, 8
    name = "pooled_" + "_".join(f.strip("-").replace("-", "_") for f in flags)
    server = start_server(
        *flags, "--io", "postgres", "--database-url", app_url(postgres, name), "--delay-ms", "300",
        "--pool-size", str(size),
    )  # fmt: skip
    with psycopg.connect(postgres.dsn, autocommit=True) as monitor:

        def sleeping() -> float:
            row = monitor.execute(SLEEPING, (name,)).fetchone()
            return float(row[0]) if row else 0.0

        before = server.scrape()
        replies, most = most_at_once(sleeping, lambda: ask_all(server, count))
    assert replies == ["ok"] * count
    # Eight requests at once, three queries at a time: the pool, not the server, is the limit.
    assert most == size
    assert_pool_was_the_limit(server, before, count, size)


HTTP_POOLED = {
    "threaded-httpx": ("threaded",),
    "async-httpx": ("async",),
    "async-http-httpx": ("async-http", "--workers", "1"),
}


@pytest.mark.parametrize("flags", HTTP_POOLED.values(), ids=HTTP_POOLED)
def test_concurrent_calls_never_exceed_the_pool_size(start_server, own_downstream, flags):
    size, count = 3, 8
    service = own_downstream().start()
    server = start_server(
        *flags, "--io", "http", "--downstream-url", service.url, "--delay-ms", "300", "--pool-size", str(size)
    )
    before = server.scrape()
    assert ask_all(server, count) == ["ok"] * count
    assert downstream_count(service, "echo_downstream_calls_in_progress_peak") == size
    assert_pool_was_the_limit(server, before, count, size)


def test_requests_never_waits_for_its_pool_it_opens_more(start_server, own_downstream):
    size, count = 3, 8
    service = own_downstream().start()
    server = start_server(
        "threaded", "--io", "http", "--http-client", "requests", "--downstream-url", service.url,
        "--delay-ms", "500", "--pool-size", str(size),
    )  # fmt: skip
    assert ask_all(server, count) == ["ok"] * count
    # urllib3's pool does not block: every request had its own connection at once.
    assert downstream_count(service, "echo_downstream_calls_in_progress_peak") == count


def test_the_library_defaults_are_the_libraries_own():
    def default(function: Callable[..., object], parameter: str) -> object:
        return inspect.signature(function).parameters[parameter].default

    libraries = {
        "psycopg": default(psycopg_pool.ConnectionPool.__init__, "min_size"),
        "asyncpg": default(asyncpg.create_pool, "max_size"),
        "httpx": default(httpx.Client, "limits").max_connections,  # type: ignore[attr-defined]
        "requests": requests.adapters.DEFAULT_POOLSIZE,
    }
    assert libraries == LIBRARY_POOL_SIZES
    assert default(psycopg_pool.ConnectionPool.__init__, "max_size") is None  # None: min_size's
    assert default(psycopg_pool.AsyncConnectionPool.__init__, "min_size") == LIBRARY_POOL_SIZES["psycopg"]
