"""Real echo servers for the tests: `echolab serve` through the launcher, and what the tests ask of them.

A server's settings come from the test's flags and ``env`` only: the
ECHO_* variables of whoever runs the tests are dropped. A server whose log
shows a traceback, that exits on its own, or that does not exit 0 on SIGTERM
is a problem the fixtures turn into a failed test (:meth:`TestServer.problems`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import http.client
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from echolab.catalogue import SERVERS, Server, server
from echolab.launcher import LaunchError, ServerProcess
from echolab.settings import ASYNC_APIS, LOOPS, THREADED_MODELS, add_arguments, from_namespace

from .scrape import Metrics, scrape, wait_for
from .waiting import TIMEOUT, poll_until
from .wire import Connection, framed

HOST = "127.0.0.1"
FAST_ARGS = ("--delay-ms", "20")  # most tests run with a short simulated IO wait
TCP_SERVERS = tuple(s.name for s in SERVERS if s.transport == "tcp")
HTTP_SERVERS = tuple(s.name for s in SERVERS if s.transport == "http")


@dataclass(frozen=True)
class TcpVariant:
    """A TCP server as the behavioural suite runs it: server x implementation x framing."""

    server: str
    kind: str  # the threaded model, or the async server's API and loop ("streams-uvloop")
    framing: str
    flags: tuple[str, ...]  # the flags that choose the implementation

    @property
    def id(self) -> str:
        return f"{self.server}-{self.kind}-{self.framing}"

    @property
    def concurrent(self) -> bool:
        return self.kind != "serial"

    @property
    def loop(self) -> str:
        """The async server's event loop; "" for the threaded one."""
        return self.kind.rpartition("-")[2] if self.server == "async" else ""

    def options(self) -> list[str]:
        return [*self.flags, "--framing", self.framing]


IMPLEMENTATIONS = [("threaded", model, ("--model", model)) for model in THREADED_MODELS] + [
    ("async", f"{api}-{loop}", ("--api", api, "--loop", loop)) for api in ASYNC_APIS for loop in LOOPS
]
# Every implementation in both framings, but the streams API on the asyncio loop in lines only:
# what differs between the loops (accepting, running out of descriptors) is the same in both
# framings, and the protocol API covers asyncio's oneshot; one variant less keeps the suite shorter.
VARIANTS = [
    TcpVariant(name, kind, framing, flags)
    for name, kind, flags in IMPLEMENTATIONS
    for framing in ("oneshot", "lines")
    if (kind, framing) != ("streams-asyncio", "oneshot")
]


def clean_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment minus ECHO_* and LOCUST_* settings, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "LOCUST_"))}
    return clean | (env or {})


class TestServer(ServerProcess):
    """A running ``echolab serve`` with a test's conveniences: talk, scrape, wait, check."""

    __test__ = False  # not a test class, whatever its name

    def __init__(
        self, kind: Server, options: list[str], log: Path, framing: str, env: dict[str, str]
    ) -> None:
        super().__init__(kind, options, log=log, env=clean_environment(env))
        self.framing = framing

    def start(self, timeout: float = 30.0) -> TestServer:
        try:
            super().start(timeout)
        except LaunchError as exc:
            pytest.fail(str(exc), pytrace=False)
        if "--no-metrics" not in self.options:
            # The readiness probe must not show in the counts a test starts from: wait until the
            # server has taken its connection (a loaded machine can leave it in the backlog a
            # while, the counts still at zero) and closed it. HTTP servers are probed on /healthz.
            probes = 1 if self.server.transport == "tcp" else 0
            self.idle_metrics(opened=probes)
        return self

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
            conn.send(framed(message, self.framing))
            return conn.line() if self.framing == "lines" else conn.read_to_eof()

    # --- metrics

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def scrape(self) -> Metrics:
        return scrape(self.metrics_url)

    def wait_metrics(self, predicate: Callable[[Metrics], bool], timeout: float = TIMEOUT) -> Metrics:
        return wait_for(self.metrics_url, predicate, timeout, self._died)

    def _died(self) -> str:
        if self.proc is not None and self.proc.poll() is not None and not self.signalled:
            return f"{self.name} server exited with {self.proc.returncode}:\n{self.log}"
        return ""

    def idle_metrics(self, opened: int = 0) -> Metrics:
        """A scrape once no connection is open and no request in flight (and ``opened`` were accepted).

        A server counts a request after writing its reply, so a client can
        see a reply before the count: waiting until the connections are gone
        makes the counts final, and exact deltas safe to assert.
        """
        return self.wait_metrics(
            lambda m: (
                m.value("echo_connections_active") == 0
                and m.value("echo_requests_in_flight") == 0
                and m.value("echo_connections_opened_total") >= opened
            )
        )

    # --- the log and the end

    def wait_for_log(self, text: str, timeout: float = TIMEOUT) -> None:
        poll_until(
            lambda: self.log, lambda log: text in log, what=f"{text!r} in the server log", timeout=timeout
        )

    def sigterm(self) -> None:
        self.send()

    def problems(self) -> list[str]:
        """Stop the server if the test has not; return what went wrong, with its log."""
        found = []
        if self.proc is not None and self.proc.poll() is not None and not self.signalled:
            found.append(f"exited on its own with {self.proc.returncode}")
        else:
            try:
                code = self.stop(30.0)
            except LaunchError:
                found.append("did not exit on SIGTERM")
            else:
                if code != 0:
                    found.append(f"exit code {code} after SIGTERM")
        if "Traceback" in self.log:
            found.append("traceback in its log")
        return [f"{self.name} server {p}:\n{self.log}" for p in found]


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers


class HttpTestServer(TestServer):
    """``echolab serve threaded-http|async-http``: HTTP requests and per-worker counts."""

    # What each worker logs once a SIGTERM would drain it: gthread's (ours), uvicorn's.
    READY = ("Worker ready (pid", "Application startup complete.")

    def is_ready(self) -> bool:
        """A worker answers, and every worker takes signals: gunicorn's workers boot one after the
        other, and a SIGTERM sent to one still booting kills it instead of draining it."""
        return super().is_ready() and sum(self.log.count(marker) for marker in self.READY) >= self.workers

    @functools.cached_property
    def workers(self) -> int:
        """The worker count as ``echolab serve`` reads it from these flags and this environment."""
        parser = argparse.ArgumentParser()
        add_arguments(parser, self.server.settings, environ=self.env)
        return from_namespace(self.server.settings, parser.parse_args(self.options)).workers

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
            metrics = MultiProcessCollector.merge(glob.glob(pattern), accumulate=False)
            counts[worker.pid] = sum(s.value for m in metrics for s in m.samples if s.name == sample)
        return counts


def settled(server: TestServer, before: Metrics, ok: int, outcome: str = "ok") -> Metrics:
    """The delta once ``ok`` requests are counted (of ``outcome``) and none is in flight.

    A server counts a request after writing its reply, so the client can read
    the reply a moment before the count moves: wait for it, then compare exactly.
    (For the TCP servers ``idle_metrics`` does the same by waiting for the
    connections to close; the HTTP servers do not report connections.)
    """
    after = server.wait_metrics(
        lambda m: (
            (m - before).query(f'echo_requests_total{{outcome="{outcome}"}}') >= ok
            and m.value("echo_requests_in_flight") == 0
        )
    )
    return after - before


def make_server(
    what: TcpVariant | str, options: tuple[str, ...], env: dict[str, str] | None, log: Path
) -> TestServer:
    """A server, not started: a variant (with the short delay), or a catalogue name with ``options`` only."""
    if isinstance(what, TcpVariant):
        argv = [*what.options(), *FAST_ARGS, *options]
        return TestServer(server(what.server), argv, log, what.framing, env or {})
    kind = server(what)
    if kind.transport == "http":
        return HttpTestServer(kind, list(options), log, "http", env or {})
    framing = options[options.index("--framing") + 1] if "--framing" in options else "lines"
    return TestServer(kind, list(options), log, framing, env or {})


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on, for the block: a server asked to bind it cannot."""
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        yield taken.getsockname()[1]


def run_command(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m echolab ARGV`` in the test environment, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "echolab", *argv],
        env=clean_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
