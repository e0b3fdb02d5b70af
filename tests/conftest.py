"""Fixtures: real echo servers in subprocesses on loopback (helpers in tests/support).

Every behavioural TCP test takes a ``variant`` (server x model-or-loop x
framing) and gets one generated test per variant, id ``threaded-pool-lines``
and so on. Three markers narrow or widen the set at collection time, so that
no combination is generated only to be skipped:

* ``@pytest.mark.framing("lines")``: only that framing;
* ``@pytest.mark.concurrent``: not the serial model, which serves one
  connection at a time and so cannot hold two at once;
* ``@pytest.mark.every_loop``: on asyncio's own event loop too, not only on
  uvloop, for what the loop itself does: accepting, holding descriptors,
  its transports' buffers and errors, shutting down. Elsewhere (framing,
  work, deadlines, all Python of ours) the loop under it makes no difference.

A server whose log shows a traceback, that exits on its own, or that does
not exit 0 on SIGTERM fails the test that started it; a server shared by a
module's tests fails the test during which it logged the traceback or died,
and its module's last test if its exit goes wrong.

The suite runs in parallel (pytest-xdist, ``--dist loadgroup``; see the
Makefile): the tests that share a server are one group, run by one worker,
so that the server starts once; so are the tests that measure CPU time or
load the machine (support/parallel.py), so that they do not run at the same time.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.postgres import ephemeral_postgres
from support.servers import HOST, HTTP_SERVERS, VARIANTS, HttpTestServer, TcpVariant, TestServer, make_server

from echolab.lab.postgres import PostgreSQL

# The session's PostgreSQL: its default, so that what the servers meet there is what users meet.
POSTGRES_MAX_CONNECTIONS = 100

HTTP_WORKERS = ("--workers", "2")  # two workers, so every count is a sum over processes


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "framing(name): run only the variants with this framing")
    config.addinivalue_line("markers", "concurrent: needs two connections at once (no serial model)")
    config.addinivalue_line("markers", "every_loop: on asyncio's own loop too, not only on uvloop")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" not in metafunc.fixturenames:
        return
    variants = VARIANTS
    framing = metafunc.definition.get_closest_marker("framing")
    if framing is not None:
        variants = [v for v in variants if v.framing == framing.args[0]]
    if metafunc.definition.get_closest_marker("concurrent") is not None:
        variants = [v for v in variants if v.concurrent]
    if metafunc.definition.get_closest_marker("every_loop") is None:
        variants = [v for v in variants if v.loop in ("", "uvloop")]
    # Module scope: tests are grouped by variant, so a module's shared server starts once per variant.
    metafunc.parametrize("variant", variants, ids=[v.id for v in variants], scope="module")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of a module that share a server make one xdist group (unless they name theirs):
    one worker starts the server once; so do the tests of the session's PostgreSQL."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        callspec = getattr(item, "callspec", None)
        if "variant_servers" in item.fixturenames and callspec is not None:
            item.add_marker(pytest.mark.xdist_group(f"{item.path.name}-{callspec.params['variant'].id}"))
        elif "shared_http" in item.fixturenames and callspec is not None:
            item.add_marker(pytest.mark.xdist_group(f"{item.path.name}-{callspec.params['shared_http']}"))
        elif "module_servers" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
        elif "postgres" in item.fixturenames:  # the session's: one worker starts it, once
            item.add_marker(pytest.mark.xdist_group("postgres"))


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

    def start(what: TcpVariant | str, *flags: str, env: dict[str, str] | None = None) -> TestServer:
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


# Servers that tests share, by what runs (a variant or a catalogue name) and the flags it runs with.
Shared = dict[tuple[TcpVariant | str, tuple[str, ...]], TestServer]


def shared_servers() -> Iterator[Shared]:
    servers: Shared = {}
    yield servers
    fail_on([problem for server in servers.values() for problem in server.problems()])


@pytest.fixture(scope="module")
def variant_servers(variant: TcpVariant) -> Iterator[Shared]:
    """The variant's servers that the module's tests share; stopped and checked after its last one."""
    yield from shared_servers()


@pytest.fixture(scope="module")
def module_servers() -> Iterator[Shared]:
    """The catalogue's servers that the module's tests share; stopped and checked after its last one."""
    yield from shared_servers()


@pytest.fixture
def borrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TestServer]]:
    """``borrow(servers, what, flags)``: the shared server, started by the first test that asks;
    idle at the start of each test (they assert deltas), checked at its end like ``checked``."""
    checks: list[Iterator[TestServer]] = []

    def get(servers: Shared, what: TcpVariant | str, flags: tuple[str, ...]) -> TestServer:
        if (what, flags) not in servers:
            log = tmp_path_factory.mktemp(what.id if isinstance(what, TcpVariant) else what) / "server.log"
            servers[what, flags] = make_server(what, flags, None, log).start()
        checks.append(checked(servers[what, flags]))
        return next(checks[-1])

    yield get
    for check in checks:
        next(check, None)


@pytest.fixture
def variant_server(
    variant: TcpVariant, variant_servers: Shared, borrow: Callable[..., TestServer]
) -> Callable[..., TestServer]:
    """``variant_server(*flags)``: the variant with a short delay and ``flags``, shared by the
    module's tests that ask for the same flags."""
    return lambda *flags: borrow(variant_servers, variant, flags)


@pytest.fixture
def module_server(module_servers: Shared, borrow: Callable[..., TestServer]) -> Callable[..., TestServer]:
    """``module_server(name, *flags)``: ``echolab serve NAME`` with ``flags``, shared likewise."""
    return lambda name, *flags: borrow(module_servers, name, flags)


@pytest.fixture
def tcp_server(variant_server: Callable[..., TestServer]) -> TestServer:
    """The variant's server with the default settings (and a short delay), shared with the module."""
    return variant_server()


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
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, not listening, for the whole test, so that
    no other process of the parallel suite can take it (a port merely free a moment ago can be)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


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
