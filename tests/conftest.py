"""Fixtures: real echo servers in subprocesses on loopback, and the variants to run them as.

Every behavioural test takes a ``variant`` (server x model-or-loop x framing)
and gets one generated test per variant, id ``threaded-pool-lines`` and so
on. Two markers narrow the set at collection time, so that no combination is
generated only to be skipped:

* ``@pytest.mark.framing("lines")``: only that framing;
* ``@pytest.mark.concurrent``: not the serial model, which serves one
  connection at a time and so cannot hold two at once.

A server whose log shows a traceback, that exits on its own, or that does not
exit 0 on SIGTERM at teardown fails the test that started it; a server shared
by a module's tests (``server``) fails the test during which it logged the
traceback or died, and its last test if its exit goes wrong.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
# Generous: a broken server fails a test with a timeout instead of hanging it.
TIMEOUT = 10.0
# Most tests run with a short simulated IO wait, to keep the suite fast.
FAST_ARGS = ("--delay-ms", "20")
HTTP_SERVERS = ("threaded-http", "async-http")


@dataclass(frozen=True)
class Variant:
    server: str  # threaded | async
    kind: str  # the threaded model or the async loop
    framing: str  # oneshot | lines

    @property
    def id(self) -> str:
        return f"{self.server}-{self.kind}-{self.framing}"

    @property
    def concurrent(self) -> bool:
        return self.kind != "serial"

    def args(self) -> list[str]:
        option = "--model" if self.server == "threaded" else "--loop"
        return [self.server, option, self.kind, "--framing", self.framing]


IMPLEMENTATIONS = [
    ("threaded", "serial"),
    ("threaded", "thread-per-connection"),
    ("threaded", "pool"),
    ("async", "uvloop"),
    ("async", "asyncio"),
]
VARIANTS = [
    Variant(server, kind, framing) for server, kind in IMPLEMENTATIONS for framing in ("oneshot", "lines")
]


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


# --- metrics -----------------------------------------------------------------


class Metrics(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """One /metrics scrape: (sample name, labels) -> value. ``after - before`` gives deltas."""

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls(
            ((sample.name, frozenset(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        )

    def value(self, name: str, **labels: str) -> float:
        """The sum over the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, have), v in self.items() if n == name and wanted <= have)

    def query(self, query: str) -> float:
        """``value`` for a PromQL-like selector: ``echo_requests_total{outcome="ok"}``."""
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})?", query)
        assert match, query
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        return self.value(match.group(1), **labels)

    def counts(self, queries: Iterable[str]) -> dict[str, float]:
        """``{query: value}``: tests write ``assert delta.counts(expected) == expected``."""
        return {query: self.query(query) for query in queries}

    def labels(self, name: str) -> dict[str, str]:
        """The labels of the one sample of ``name`` (for info metrics)."""
        found = [dict(have) for (n, have) in self if n == name]
        assert len(found) == 1, f"{name}: {found}"
        return found[0]

    def __sub__(self, other: Metrics) -> Metrics:  # type: ignore[override]
        return Metrics({key: value - other.get(key, 0.0) for key, value in self.items()})


# --- a client connection -----------------------------------------------------


class Connection:
    """A blocking client socket with a read buffer, for talking to a server by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line, with its newline; what is left (maybe b"") if the server closes first."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read_to_eof(self) -> bytes:
        chunks = [self.buffer]
        self.buffer = b""
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def outcome(self) -> bytes | str:
        """Everything until the server closes, or the kind of error that ended it."""
        try:
            return self.read_to_eof()
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the server process ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m echolab serve ...`` on free loopback ports, its stderr kept in a file."""

    def __init__(self, name: str, framing: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.framing = framing
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.signalled = False
        self.proc: subprocess.Popen[bytes] | None = None

    # --- starting

    def start(self) -> ServerProcess:
        for _attempt in range(3):
            self.port, self.metrics_port = free_port(), free_port()
            command = [
                sys.executable, "-m", "echolab", "serve", *self.argv,
                "--host", HOST, "--port", str(self.port), "--metrics-port", str(self.metrics_port),
            ]  # fmt: skip
            # Settings come from the flags above and the test's env only.
            env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")} | self.env
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
            if self.wait_ready():
                return self
            # Lost a race for a free port with another process: try new ones.
        pytest.fail(f"server would not start:\n{self.log}")

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Poll until the echo port accepts and the probe connection is gone again."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                if "Address already in use" in self.log:
                    return False
                pytest.fail(f"server exited with {self.proc.returncode} while starting:\n{self.log}")
            try:
                socket.create_connection(self.address, timeout=TIMEOUT).close()
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    pytest.fail(f"server not accepting after {timeout}s:\n{self.log}")
                time.sleep(0.02)
        if "--no-metrics" not in self.argv:
            # The probe must not show in the counts a test takes as its baseline.
            self.idle_metrics()
        return True

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # --- talking to it

    def connect(self, timeout: float = TIMEOUT) -> Connection:
        return Connection(socket.create_connection(self.address, timeout=timeout))

    @contextlib.contextmanager
    def connections(self, count: int) -> Iterator[list[Connection]]:
        conns = [self.connect() for _ in range(count)]
        try:
            yield conns
        finally:
            for conn in conns:
                conn.close()

    def exchange(self, message: bytes) -> bytes:
        """One request on a new connection, in the server's framing; the raw reply."""
        with self.connect() as conn:
            if self.framing == "lines":
                conn.send(message + b"\n")
                return conn.line()
            conn.send(message)
            return conn.read_to_eof()

    # --- metrics

    def scrape(self) -> Metrics:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return Metrics.parse(response.read().decode())

    def wait_metrics(self, predicate: Callable[[Metrics], bool], timeout: float = TIMEOUT) -> Metrics:
        """Scrape until ``predicate`` holds; fail with the last scrape if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.scrape()
            if predicate(metrics):
                return metrics
            if time.monotonic() > deadline:
                pytest.fail(f"metrics never matched {predicate}: {sorted(metrics.items())}")
            time.sleep(0.02)

    def idle_metrics(self) -> Metrics:
        """A scrape once no connection is open and no request in flight.

        A server counts a request after writing its reply, so a client can
        see a reply before the count: waiting until the connections are gone
        makes the counts final, and exact deltas safe to assert.
        """
        return self.wait_metrics(
            lambda m: m.value("echo_connections_active") == 0 and m.value("echo_requests_in_flight") == 0
        )

    # --- the log

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not in the server log after {timeout}s:\n{self.log}")
            time.sleep(0.02)

    # --- stopping

    def sigterm(self) -> None:
        self.signalled = True
        os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> list[str]:
        """Stop the server if the test has not; return what went wrong."""
        assert self.proc is not None
        problems = []
        if self.proc.poll() is not None and not self.signalled:
            problems.append(f"exited on its own with {self.proc.returncode}")
        elif not self.signalled:
            self.sigterm()
        try:
            code = self.wait()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            problems.append("did not exit on SIGTERM")
        else:
            if code != 0:
                problems.append(f"exit code {code} after SIGTERM")
        if "Traceback" in self.log:
            problems.append("traceback in its log")
        return [f"{self.name} server {p}:\n{self.log}" for p in problems]


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers


class HttpServer(ServerProcess):
    """``echolab serve threaded-http|async-http``: ready once /healthz answers."""

    def wait_ready(self, timeout: float = 30.0) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                if "Address already in use" in self.log or "Connection in use" in self.log:
                    return False  # lost a free port to another process: start() tries new ones
                pytest.fail(f"server exited with {self.proc.returncode} while starting:\n{self.log}")
            try:
                if self.request("GET", "/healthz", timeout=1.0).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/healthz not answering after {timeout}s:\n{self.log}")
            time.sleep(0.05)
        self.idle_metrics()
        return True

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        timeout: float = TIMEOUT,
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """One request on a new connection (so that requests spread over the workers)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body)
            if on_sent is not None:
                on_sent()
            response = conn.getresponse()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return Response(response.status, response.read(), headers)
        finally:
            conn.close()

    def echo(self, body: bytes) -> bytes:
        response = self.request("POST", "/echo", body)
        assert response.status == 200, (response.status, response.body)
        return response.body

    def worker_counts(self, sample: str) -> dict[int, float]:
        """``sample`` (e.g. ``echo_requests_total``, all labels) as each live worker's own files hold it."""
        counts = {}
        for worker in psutil.Process(self.pid).children():
            pattern = os.path.join(tempfile.gettempdir(), "echolab-*-metrics-*", f"counter_{worker.pid}.db")
            files = glob.glob(pattern)
            metrics = MultiProcessCollector.merge(files, accumulate=False)
            counts[worker.pid] = sum(s.value for m in metrics for s in m.samples if s.name == sample)
        return counts


def _server_process(
    variant: Variant | str, args: tuple[str, ...], env: dict[str, str] | None, log_path: Path
) -> ServerProcess:
    if isinstance(variant, Variant):
        argv = [*variant.args(), *FAST_ARGS, *args]
        return ServerProcess(variant.id, variant.framing, argv, env or {}, log_path)
    if variant in HTTP_SERVERS:
        return HttpServer(variant, "http", [variant, *args], env or {}, log_path)
    return ServerProcess(variant, "unknown", [variant, *args], env or {}, log_path)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A ready server of its own for a test, checked and stopped at teardown.

    ``start_server(variant, *flags, env={...})`` runs the variant with a short
    delay and ``flags`` (later flags win); ``start_server("threaded", *flags)``
    runs ``echolab serve threaded`` with only ``flags``, and
    ``start_server("threaded-http", *flags)`` an HTTP server (an HttpServer).
    """
    servers: list[ServerProcess] = []

    def start(variant: Variant | str, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = _server_process(variant, args, env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server.start()

    yield start
    problems = [problem for server in servers for problem in server.stop()]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def shared_server(variant: Variant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per variant and module, for the tests that need only the default settings.

    Starting a server costs more than most tests; the module's tests run
    grouped by variant, so each variant starts once. ``server`` checks the
    log after each test; this checks the exit at the end.
    """
    log_path = tmp_path_factory.mktemp(variant.id) / "server.log"
    server = _server_process(variant, (), None, log_path).start()
    yield server
    problems = server.stop()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def server(shared_server: ServerProcess) -> Iterator[ServerProcess]:
    """The variant's server with the default settings (and a short delay).

    Shared with the module's other tests of the variant, so it starts idle,
    and a traceback it logs during the test, or its death, fails this test.
    """
    shared_server.idle_metrics()
    logged = len(shared_server.log)
    yield shared_server
    problems = []
    if shared_server.proc is not None and shared_server.proc.poll() is not None:
        problems.append(f"exited with {shared_server.proc.returncode}")
    if "Traceback" in shared_server.log[logged:]:
        problems.append("logged a traceback")
    if problems:
        pytest.fail(f"{shared_server.name} server {', '.join(problems)}:\n{shared_server.log}", pytrace=False)
