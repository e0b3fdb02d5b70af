"""Fixtures: real echo servers in subprocesses on loopback (helpers in tests/support).

Every behavioural TCP test takes a ``variant`` (server x model-or-loop x
framing) and gets one generated test per variant, id ``threaded-pool-lines``
and so on. Two markers narrow the set at collection time, so that no
combination is generated only to be skipped:

* ``@pytest.mark.framing("lines")``: only that framing;
* ``@pytest.mark.concurrent``: not the serial model, which serves one
  connection at a time and so cannot hold two at once.

A server whose log shows a traceback, that exits on its own, or that does
not exit 0 on SIGTERM fails the test that started it; a server shared by a
module's tests fails the test during which it logged the traceback or died,
and its module's last test if its exit goes wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.postgres import ephemeral_postgres
from support.servers import HTTP_SERVERS, VARIANTS, HttpTestServer, TestServer, Variant, make_server

from echolab.lab.postgres import PostgreSQL

# The session's PostgreSQL: its default, so that what the servers meet there is what users meet.
POSTGRES_MAX_CONNECTIONS = 100

HTTP_WORKERS = ("--workers", "2")  # two workers, so every count is a sum over processes


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "framing(name): run only the variants with this framing")
    config.addinivalue_line("markers", "concurrent: needs two connections at once (no serial model)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" not in metafunc.fixturenames:
        return
    variants = VARIANTS
    framing = metafunc.definition.get_closest_marker("framing")
    if framing is not None:
        variants = [v for v in variants if v.framing == framing.args[0]]
    if metafunc.definition.get_closest_marker("concurrent") is not None:
        variants = [v for v in variants if v.concurrent]
    # Module scope: tests are grouped by variant, so a module's shared server starts once per variant.
    metafunc.parametrize("variant", variants, ids=[v.id for v in variants], scope="module")


def fail_on(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., TestServer]]:
    """A ready server of its own for a test, checked and stopped at teardown.

    ``start_server(variant, *flags, env={...})`` runs the variant with a short
    delay and ``flags`` (later flags win); ``start_server("threaded", *flags)``
    runs ``echolab serve threaded`` with only ``flags``; an HTTP server's name
    gives an HttpTestServer.
    """
    servers: list[TestServer] = []

    def start(what: Variant | str, *flags: str, env: dict[str, str] | None = None) -> TestServer:
        servers.append(make_server(what, flags, env, tmp_path / f"server-{len(servers)}.log"))
        return servers[-1].start()

    yield start
    fail_on([problem for server in servers for problem in server.problems()])


def checked(shared: TestServer) -> Iterator[TestServer]:
    """The shared server, idle at first; a traceback it logs during the test, or its exit, fails the test."""
    shared.idle_metrics()
    logged = len(shared.log)
    yield shared
    if shared.proc is not None and shared.proc.poll() is not None:
        pytest.fail(
            f"{shared.name} server exited with {shared.proc.returncode}:\n{shared.log}", pytrace=False
        )
    if "Traceback" in shared.log[logged:]:
        pytest.fail(f"{shared.name} server logged a traceback:\n{shared.log}", pytrace=False)


@pytest.fixture(scope="module")
def shared_tcp(variant: Variant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """One TCP server per variant and module, for the tests that need only the default settings."""
    server = make_server(variant, (), None, tmp_path_factory.mktemp(variant.id) / "server.log").start()
    yield server
    fail_on(server.problems())


@pytest.fixture
def tcp_server(shared_tcp: TestServer) -> Iterator[TestServer]:
    """The variant's server with the default settings (and a short delay), shared with the module."""
    yield from checked(shared_tcp)


@pytest.fixture(scope="module", params=HTTP_SERVERS)
def shared_http(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestServer]:
    """Each HTTP server once per module, two workers, a short delay."""
    log = tmp_path_factory.mktemp(request.param) / "server.log"
    server = make_server(request.param, (*HTTP_WORKERS, "--delay-ms", "20"), None, log).start()
    yield server
    fail_on(server.problems())


@pytest.fixture
def http_server(shared_http: HttpTestServer) -> Iterator[HttpTestServer]:
    """The module's HTTP server, idle at the start; checked like ``tcp_server``."""
    yield from checked(shared_http)  # type: ignore[misc]


@pytest.fixture
def start_http(start_server: Callable[..., TestServer]) -> Callable[..., HttpTestServer]:
    """``start_http(name, *flags)``: ``start_server`` with two workers."""

    def start(name: str, *flags: str) -> HttpTestServer:
        server = start_server(name, *HTTP_WORKERS, *flags)
        assert isinstance(server, HttpTestServer)
        return server

    return start


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgreSQL]:
    """A PostgreSQL of the session's own (``postgres.dsn``), from the system's binaries; gone afterwards.

    Shared: a test that stops it, or changes what others read, starts one of its own
    (``support.postgres.ephemeral_postgres``).
    """
    with ephemeral_postgres(POSTGRES_MAX_CONNECTIONS) as server:
        yield server
