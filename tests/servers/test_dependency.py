"""The request's IO as a real dependency (--io postgres, --io http), in every server, through real drivers.

Every test runs real servers against the session's real PostgreSQL (or one
of its own, to stop and start) and a real ``echolab downstream``. No test
asserts a time: replies, counts, and how many calls were in progress at
once (PostgreSQL's pg_stat_activity, the downstream's peak gauge).
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import psycopg
import psycopg_pool
import pytest
import requests
from support.postgres import ephemeral_postgres
from support.scrape import Metrics, scrape
from support.servers import TestServer, clean_environment, run_command, settled, taken_port
from support.waiting import TIMEOUT, poll_until

from echolab.lab.downstream import DownstreamProcess
from echolab.lab.postgres import PostgreSQL
from echolab.metrics import DEPENDENCY_ERRORS
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


@contextlib.contextmanager
def bound_port() -> Iterator[socket.socket]:
    """A loopback port bound and not listening: refused, and no one else's, until the block ends; a
    process may bind it meanwhile (SO_REUSEADDR on both sides: Python's listening sockets set it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.fixture
def own_downstream(tmp_path: Path) -> Iterator[Callable[..., DownstreamProcess]]:
    """``own_downstream(ports=(port, metrics_port))``: a downstream of the test's own, not started (its
    peak is the test's), on free ports or those."""
    made: list[DownstreamProcess] = []

    def make(ports: tuple[int, int] | None = None) -> DownstreamProcess:
        options = ("--port", str(ports[0]), "--metrics-port", str(ports[1])) if ports else ()
        log = tmp_path / f"downstream-{len(made)}.log"
        made.append(DownstreamProcess(options, log=log, env=clean_environment()))
        if ports:  # the flags given last win; the process is ready once that port accepts
            made[-1].port, made[-1].metrics_port = ports
        return made[-1]

    yield make
    for process in made:
        if process.running():
            assert process.stop() == 0, process.log
        assert "Traceback" not in process.log, process.log


@pytest.fixture(scope="module")
def stoppable_postgres() -> Iterator[PostgreSQL]:
    """A PostgreSQL of this module's own, which its fault tests stop and start (one initdb for all of
    them: they are one xdist group, FAULTS); running at the start of each test."""
    with ephemeral_postgres(max_connections=20) as server:
        yield server


@pytest.fixture
def faulty_postgres(stoppable_postgres: PostgreSQL) -> PostgreSQL:
    if not stoppable_postgres.running():
        stoppable_postgres.start()
    return stoppable_postgres


# The tests that stop and start stoppable_postgres: one worker runs them, one after the other.
FAULTS = pytest.mark.xdist_group("dependency-faults")


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


def answers_through(server: TestServer, io: str, library: str) -> int:
    """A few requests at once, all answered through ``library``'s pool, at its default size; how many."""
    before = server.scrape()
    count = 4
    assert ask_all(server, count) == ["ok"] * count
    delta = settled(server, before, count)
    assert delta.query('echo_work_seconds_total{kind="io"}') == pytest.approx(count * 0.05)
    after = server.scrape()
    info = after.labels("echo_server_info")
    size = LIBRARY_POOL_SIZES[library]
    assert (info["io"], info["client"], info["pool_size"]) == (io, library, str(size))
    assert_dependency_metrics(after, delta, count, size)
    return count


# --- every server, both dependencies --------------------------------------------------------


@pytest.mark.parametrize("flags", [*SERVERS.values(), *ASYNCPG.values()], ids=[*SERVERS, *ASYNCPG])
def test_every_server_answers_through_postgres(start_server, postgres, flags):
    name = flags[0].replace("-", "_") + "_" + str(len(flags))
    server = start_server(
        *flags, "--io", "postgres", "--database-url", app_url(postgres, name), "--delay-ms", "50"
    )
    answers_through(server, "postgres", "asyncpg" if "asyncpg" in flags else "psycopg")
    # Its pool's connections are there, under the server's name.
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
    assert sessions is not None and sessions[0] >= 1


# A client of each kind: psycopg's pool for threads and for an event loop, asyncpg's, gunicorn's workers.
CLIENTS = {name: flags for name, flags in {**SERVERS, **ASYNCPG}.items()
           if name in ("threaded-pool", "async-streams", "async-streams-asyncpg", "async-http")}  # fmt: skip


@pytest.mark.parametrize("flags", CLIENTS.values(), ids=CLIENTS)
def test_the_password_comes_from_the_password_file_when_one_is_named(start_server, postgres, tmp_path, flags):
    """--database-password-file, as a compose secret gives it: the URL holds no password, and the
    file's is the one used (a wrong one is refused: PostgreSQL asks for one on every connection)."""
    parts = urlsplit(postgres.dsn)
    url = parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}").geturl()
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(postgres.password + "\n")
    wrong.write_text(f"not-{postgres.password}\n")
    options = ("--io", "postgres", "--database-url", url, "--delay-ms", "10", "--database-password-file")
    assert ask(start_server(*flags, *options, str(right))) == "ok"
    refused = start_server(*flags, *options, str(wrong))
    assert ask(refused) == "dependency"
    refused.wait_metrics(lambda m: m.value("echo_dependency_errors_total", kind="connect") == 1)


@pytest.mark.parametrize("flags", CLIENTS.values(), ids=CLIENTS)
def test_a_port_in_use_ends_the_start_in_one_line_before_a_pool_starts(postgres, flags):
    """An event loop's psycopg pool, once started, kept a start that failed from ending: asyncio's
    closing cancels the pool's tasks, and its connection attempts outlive a cancellation."""
    with taken_port() as port:
        database = ("--io", "postgres", "--database-url", postgres.dsn)
        done = run_command("serve", *flags, *database, "--port", str(port), "--metrics-port", "0", timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"cannot start: the echo port, 127.0.0.1:{port}: Address already in use" in done.stderr


@pytest.mark.parametrize("flags", [*SERVERS.values(), *REQUESTS.values()], ids=[*SERVERS, *REQUESTS])
def test_every_server_answers_through_the_downstream(start_server, downstream, flags):
    server = start_server(*flags, "--io", "http", "--downstream-url", downstream.url, "--delay-ms", "50")
    calls = downstream_count(downstream, "echo_downstream_requests_total")
    count = answers_through(server, "http", "requests" if "requests" in flags else "httpx")
    # The downstream is shared with the module's other tests, which run one at a time on this worker.
    assert downstream_count(downstream, "echo_downstream_requests_total") - calls == count


@pytest.mark.parametrize("name", ["threaded-http", "async-http"])
def test_each_gunicorn_worker_has_a_pool_of_its_own(start_http, postgres, name):
    server = start_http(name, "--io", "postgres", "--database-url", postgres.dsn, "--pool-size", "3")
    # Two worker processes, three connections each: the server's pool is their sum.
    server.wait_metrics(lambda m: m.value("echo_dependency_pool_size") == 6)
    assert server.scrape().labels("echo_server_info")["pool_size"] == "3"


WITH_WORK = {
    "threaded": ("threaded",),
    "async-streams-offload": ("async", "--api", "streams", "--offload", "thread"),
    "async-protocol-offload": ("async", "--api", "protocol", "--offload", "thread"),
    "async-protocol": ("async", "--api", "protocol"),
    "async-http-offload": ("async-http", "--workers", "1", "--offload", "thread"),
}


@pytest.mark.parametrize("flags", WITH_WORK.values(), ids=WITH_WORK)
def test_cpu_and_blocking_work_come_before_the_dependency(start_server, downstream, flags):
    server = start_server(
        *flags, "--io", "http", "--downstream-url", downstream.url, "--delay-ms", "20", "--cpu-ms", "2",
        "--blocking-ms", "10",
    )  # fmt: skip
    before = server.scrape()
    count = 4
    assert ask_all(server, count) == ["ok"] * count
    delta = settled(server, before, count)
    work = {
        kind: delta.query(f'echo_work_seconds_total{{kind="{kind}"}}') for kind in ("cpu", "blocking", "io")
    }
    assert work == pytest.approx({"cpu": count * 0.002, "blocking": count * 0.01, "io": count * 0.02})
    assert delta.value("echo_dependency_pool_wait_seconds_count") == count


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


# --- failures: counted by kind, answered at once, and over without a restart ------------------

# Each client once (psycopg's pools, sync and async, behind a gate; asyncpg's and httpx's connect when
# asked), and both HTTP servers' 503.
DB_DOWN_AT_START = {
    "threaded": ("threaded",),
    "async-streams": ("async", "--api", "streams"),
    "async-protocol-asyncpg": ("async", "--api", "protocol", "--db-driver", "asyncpg"),
}
DOWN_AT_START = {
    "threaded": ("threaded",),
    "async-protocol": ("async", "--api", "protocol"),
    "threaded-http": ("threaded-http", "--workers", "1"),
    "async-http": ("async-http", "--workers", "1"),
}


def errors_by_kind(server: TestServer, before: Metrics) -> dict[str, float]:
    """The dependency's errors since ``before``, by kind, those that occurred."""
    delta = server.scrape() - before
    counts = {kind: delta.value("echo_dependency_errors_total", kind=kind) for kind in DEPENDENCY_ERRORS}
    return {kind: count for kind, count in counts.items() if count}


def fails_then_recovers(server: TestServer, bring_back: Callable[[], object]) -> None:
    """With the dependency down, every request fails at once, counted as connect; once it is back, the
    server serves again, the same process."""
    before = server.scrape()
    count = 5
    # One after the other, each within the client's timeout of a few seconds, not the pool's 30 s.
    assert [ask(server) for _ in range(count)] == ["dependency"] * count
    delta = settled(server, before, count, outcome="dependency_error")
    expected = {
        'echo_dependency_errors_total{kind="connect"}': count,
        "echo_dependency_errors_total": count,
        'echo_requests_total{outcome="dependency_error"}': count,
    }
    assert delta.counts(expected) == expected
    pid = server.pid
    bring_back()
    poll_until(
        lambda: ask(server),
        lambda reply: reply == "ok",
        what="a reply once the dependency is back",
        timeout=3 * TIMEOUT,
    )
    assert ask_all(server, count) == ["ok"] * count
    assert server.pid == pid


@FAULTS
@pytest.mark.parametrize("flags", DB_DOWN_AT_START.values(), ids=DB_DOWN_AT_START)
def test_postgres_down_at_start_fails_each_request_at_once_then_serves_when_it_is_back(
    start_server, faulty_postgres, flags
):
    faulty_postgres.stop()
    server = start_server(
        *flags, "--io", "postgres", "--database-url", faulty_postgres.dsn, "--delay-ms", "20"
    )
    fails_then_recovers(server, faulty_postgres.start)


@pytest.mark.parametrize("flags", DOWN_AT_START.values(), ids=DOWN_AT_START)
def test_the_downstream_down_at_start_fails_each_request_at_once_then_serves_when_it_is_back(
    start_server, own_downstream, flags
):
    with contextlib.ExitStack() as held:
        # Its ports held, bound but not listening (refused), until it starts: another test's
        # process could take a port merely free meanwhile.
        ports = [held.enter_context(bound_port()) for _ in range(2)]
        service = own_downstream(ports=(ports[0].getsockname()[1], ports[1].getsockname()[1]))
        server = start_server(*flags, "--io", "http", "--downstream-url", service.url, "--delay-ms", "20")
        fails_then_recovers(server, service.start)


POOL_TIMEOUTS = {
    "threaded-psycopg": ("threaded", "--io", "postgres"),
    "async-psycopg": ("async", "--io", "postgres"),
    "async-asyncpg": ("async", "--io", "postgres", "--db-driver", "asyncpg"),
    "threaded-httpx": ("threaded", "--io", "http"),
    "async-httpx": ("async", "--io", "http"),
}


@pytest.mark.parametrize("flags", POOL_TIMEOUTS.values(), ids=POOL_TIMEOUTS)
def test_a_request_that_waits_past_the_pool_timeout_fails_as_pool_timeout(
    start_server, postgres, downstream, flags
):
    # One connection, held for 3 s by whichever request has it; the other two wait half a second.
    server = start_server(
        *flags, "--database-url", postgres.dsn, "--downstream-url", downstream.url, "--delay-ms", "3000",
        "--pool-size", "1", "--pool-timeout", "0.5",
    )  # fmt: skip
    before = server.scrape()
    assert sorted(ask_all(server, 3)) == ["dependency", "dependency", "ok"]
    delta = server.scrape() - before
    expected = {'echo_dependency_errors_total{kind="pool_timeout"}': 2, "echo_dependency_errors_total": 2}
    assert delta.counts(expected) == expected


def connected_when_free(db: PostgreSQL) -> psycopg.Connection[Any]:
    """A connection, once the sessions of the group's previous test, which may have filled
    max_connections, have ended."""

    def attempt() -> psycopg.Connection[Any] | None:
        try:
            return psycopg.connect(db.dsn, autocommit=True)
        except psycopg.OperationalError:
            return None

    conn = poll_until(attempt, what="a free connection slot")
    assert conn is not None
    return conn


@FAULTS
@pytest.mark.parametrize("flags", [("threaded",), ("async",)], ids=["threaded", "async"])
def test_a_pool_larger_than_max_connections_queues_for_the_connections_there_are(
    start_server, faulty_postgres, flags
):
    # 20 connections at most, one of them the test's: psycopg's pool of 30 gets 19, and its attempts
    # at more are refused ("too many clients"); requests queue for those 19 and none fails.
    count, name = 40, "crowded_" + flags[0]
    with connected_when_free(faulty_postgres) as monitor:  # first: the pool takes the rest
        server = start_server(
            *flags, "--io", "postgres", "--database-url", app_url(faulty_postgres, name), "--delay-ms", "300",
            "--pool-size", "30",
        )  # fmt: skip
        before = server.scrape()

        def sleeping() -> float:
            row = monitor.execute(SLEEPING, (name,)).fetchone()
            return float(row[0]) if row else 0.0

        replies, most = most_at_once(sleeping, lambda: ask_all(server, count))
    assert replies == ["ok"] * count
    assert 0 < most <= faulty_postgres.max_connections - 1
    assert errors_by_kind(server, before) == {}


@FAULTS
def test_asyncpg_past_max_connections_fails_the_requests_it_cannot_connect_for(start_server, faulty_postgres):
    # asyncpg connects when a request acquires: refused ("too many clients"), that request fails.
    count = 40
    server = start_server(
        "async", "--io", "postgres", "--db-driver", "asyncpg", "--database-url", faulty_postgres.dsn,
        "--delay-ms", "300", "--pool-size", "30",
    )  # fmt: skip
    before = server.scrape()
    replies = ask_all(server, count)
    assert set(replies) == {"ok", "dependency"}
    assert errors_by_kind(server, before) == {"connect": replies.count("dependency")}


RESTARTED = {
    "threaded": ("threaded",),
    "async-streams": ("async", "--api", "streams"),
    "async-protocol-asyncpg": ("async", "--api", "protocol", "--db-driver", "asyncpg"),
}


@FAULTS
@pytest.mark.parametrize("flags", RESTARTED.values(), ids=RESTARTED)
def test_a_postgres_restart_under_load_costs_counted_errors_and_no_client(
    start_server, faulty_postgres, flags
):
    clients, size, db = 8, 4, faulty_postgres
    server = start_server(
        *flags, "--io", "postgres", "--database-url", db.dsn, "--delay-ms", "100",
        "--pool-size", str(size), "--pool-timeout", "5",
    )  # fmt: skip
    before = server.scrape()
    restarted = threading.Event()
    replies: list[list[str]] = [[] for _ in range(clients)]

    def client(mine: list[str]) -> None:
        """Requests on one connection until two were answered after the restart; each must be answered."""
        with server.connect(timeout=2 * TIMEOUT) as conn:
            after = 0
            while after < 2:
                conn.send(b"hello\n")
                reply = conn.line()  # a TimeoutError here is a client lost to a hang
                mine.append({b"HELLO\n": "ok", ERROR_DEPENDENCY: "dependency"}.get(reply, repr(reply)))
                after += restarted.is_set() and mine[-1] == "ok"

    with ThreadPoolExecutor(clients) as pool:
        running = [pool.submit(client, mine) for mine in replies]
        server.wait_metrics(lambda m: m.value("echo_dependency_connections_in_use") == size)
        db.stop("immediate")
        db.start()
        restarted.set()
        for future in running:
            future.result()
    seen = {reply for mine in replies for reply in mine}
    assert seen <= {"ok", "dependency"}, seen
    errors = errors_by_kind(server, before)
    # The queries under way when it went were lost, and counted; every client got a reply to each
    # request, and was served again after the restart, by the same server.
    assert errors and set(errors) <= {"query", "connect", "pool_timeout"}, errors
    assert sum(errors.values()) == sum(mine.count("dependency") for mine in replies)


DRAINED = {
    "threaded": ("threaded",),
    "async-streams": ("async", "--api", "streams"),
    "async-http-asyncpg": ("async-http", "--workers", "1", "--db-driver", "asyncpg"),
    "threaded-http": ("threaded-http", "--workers", "1"),
}


@pytest.mark.parametrize("flags", DRAINED.values(), ids=DRAINED)
def test_sigterm_drains_the_requests_waiting_in_the_database(start_server, postgres, flags):
    count = 4
    name = "drained_" + "_".join(f.strip("-").replace("-", "_") for f in flags)
    server = start_server(
        *flags, "--io", "postgres", "--database-url", app_url(postgres, name), "--delay-ms", "1000"
    )
    with ThreadPoolExecutor(count) as pool, psycopg.connect(postgres.dsn, autocommit=True) as monitor:
        replies = pool.map(lambda i: ask(server, b"drain %d" % i), range(count))
        poll_until(
            lambda: monitor.execute(SLEEPING, (name,)).fetchone(),
            lambda row: row == (count,),
            what="every request's query under way",
        )
        server.sigterm()
        assert list(replies) == ["ok"] * count
    assert server.wait() == 0
