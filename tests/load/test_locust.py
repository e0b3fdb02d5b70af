"""The Locust users (TCP and HTTP) against real servers, and against servers that misbehave on purpose.

Locust always runs in a subprocess: importing it here would monkey-patch the
test process for gevent. Each run is bounded by ``-t`` and stopped with
SIGTERM as soon as what a test waits for shows in its /metrics (Locust then
writes its final stats and exits); a shape run ends with its ``-t``; a fixture kills whatever is left, and
fails the test if a Locust log shows a traceback (e.g. from our listeners).
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.locust import DEADLINE, TCP_USERS, LocustProcess
from support.parallel import MEASURING
from support.scrape import Metrics
from support.servers import HOST, HTTP_SERVERS, TestServer

from echolab.launcher import free_port

TARGETS = ("threaded", "async")
HTTP_USERS = ("ThreadedHttpUser", "AsyncHttpUser")
# framing -> (the targets, their user classes, Locust's request type for them)
PROTOCOLS = {
    "lines": (TARGETS, TCP_USERS, "lines"),
    "oneshot": (TARGETS, TCP_USERS, "oneshot"),
    "http": (HTTP_SERVERS, HTTP_USERS, "POST"),
}


def headless(users: int, *args: str) -> list[str]:
    return ["--headless", "-u", str(users), "-r", str(users), "-t", "120s", "--only-summary", *args]


def targets(*addresses: tuple[str, int], names: tuple[str, ...] = TARGETS) -> list[str]:
    """``--<target>-host`` and ``--<target>-port`` for each of ``names``, in order."""
    return [arg for name, (host, port) in zip(names, addresses, strict=True)
            for arg in (f"--{name}-host", host, f"--{name}-port", str(port))]  # fmt: skip


def requests(metrics: Metrics, target: str) -> float:
    return metrics.value("echo_client_requests_total", server=target)


def http_servers(start: Callable[..., TestServer], *args: str) -> list[TestServer]:
    """Both HTTP servers, one gunicorn worker each (enough for a few users), 10 ms delay."""
    return [start(name, "--workers", "1", "--delay-ms", "10", *args) for name in HTTP_SERVERS]


def echo_servers(module_server: Callable[..., TestServer], framing: str) -> list[str]:
    """The pair of servers that speaks ``framing`` (``http``: the HTTP pair), shared by the module's
    tests (each asserts what its own Locust run saw); Locust's arguments for them."""
    if framing == "http":
        return targets(*(s.address for s in http_servers(module_server)), names=HTTP_SERVERS)
    servers = [module_server(t, "--framing", framing, "--delay-ms", "10") for t in TARGETS]
    return targets(*(s.address for s in servers))


# Users that pause between requests: what a test counts (users, steps, reports) needs no more, and a
# user that does not pause sends a hundred requests a second to a server of 10 ms.
PACED = ("--think-time", "0.1")
# The tests that share the servers of one kind: one pytest-xdist worker runs them one after the other.
LINES_PAIR = pytest.mark.xdist_group("locust-lines")
TIMED_RUNS = pytest.mark.xdist_group("locust-timed-runs")
SLOW_SERVER = pytest.mark.xdist_group("locust-slow-server")


# --- requests that succeed -----------------------------------------------------


@LINES_PAIR
@pytest.mark.parametrize("framing", list(PROTOCOLS))
def test_requests_succeed_against_both_servers(
    framing: str, module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    """Both TCP users in either framing, or both HTTP users (FastHttpUser), against real servers."""
    names, users, method = PROTOCOLS[framing]
    framing_args = [] if framing == "http" else ["--framing", framing]
    run = locust(*headless(4, *echo_servers(module_server, framing), *framing_args), users=users)
    metrics = run.wait_metrics(
        lambda m: all(requests(m, t) >= 20 and m.value("echo_client_users", server=t) == 2 for t in names)
    )
    assert run.stop() == 0, run.log
    for target in names:
        assert metrics.value("echo_client_requests_total", server=target, framing=framing) == requests(
            metrics, target
        )
        assert metrics.value("echo_client_failures_total", server=target) == 0
        assert metrics.value("echo_client_request_duration_seconds_count", server=target) == requests(
            metrics, target
        )
        # The server delays each reply by 10 ms, so no request can be in the lowest buckets.
        assert metrics.value("echo_client_request_duration_seconds_bucket", server=target, le="0.005") == 0
    assert metrics.labels("echo_client_info") == {"role": "local"}
    assert metrics.value("process_cpu_seconds_total") > 0
    stats = run.stats()
    for target in names:
        assert stats[target]["method"] == method
        assert stats[target]["num_requests"] >= requests(metrics, target)
        assert stats[target]["num_failures"] == 0


@LINES_PAIR
def test_each_request_gets_the_whole_read_timeout(
    module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    """Many quick requests add up to far more than one read timeout: none may time out.

    (A libev timer restarted after stop() keeps only the time remaining: a
    user that reused one that way failed every request after the first
    --read-timeout seconds of load.)
    """
    # A timeout no reply of 10 ms comes near, even on a machine the parallel suite keeps busy.
    run = locust(*headless(4, *echo_servers(module_server, "lines"), "--read-timeout", "1"))
    # 2 users per target, 10 ms per request: 600 requests hold a timer armed for ~3 s each.
    metrics = run.wait_metrics(lambda m: all(requests(m, t) >= 600 for t in TARGETS))
    assert run.stop() == 0, run.log
    for target in TARGETS:
        assert metrics.value("echo_client_failures_total", server=target) == 0


# --- requests that fail, by kind -----------------------------------------------


# A well-formed HTTP response with the wrong body: a failure of the reply, not of HTTP.
WRONG_HTTP_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nNOT YOUR ECHO\n"


class BadServer:
    """A loopback server that reads a request, then replies wrongly, resets, closes, or never answers.

    ``http``: its wrong reply is an HTTP response (200, the wrong body).
    """

    def __init__(self, behaviour: str, http: bool = False) -> None:
        self.behaviour = behaviour
        self.wrong_reply = WRONG_HTTP_REPLY if http else b"NOT YOUR ECHO\n"
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.1)
        self.address = self.listener.getsockname()[:2]
        self.stopping = threading.Event()
        self.connections: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            while not self.stopping.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                if self.behaviour == "wrong_reply":
                    conn.sendall(self.wrong_reply)
                elif self.behaviour == "reset":
                    # SO_LINGER 0: close sends RST, the client's recv gets ECONNRESET.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif self.behaviour == "closed":
                    return  # a plain close: the client reads end of file where its reply should be
                # "timeout": read on, answer never

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        self.listener.close()


@pytest.fixture
def bad_server() -> Iterator[Callable[..., BadServer]]:
    servers: list[BadServer] = []

    def start(behaviour: str, http: bool = False) -> BadServer:
        servers.append(BadServer(behaviour, http))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# A multicast group: TCP cannot connect to one, and the kernel says ENETUNREACH at once, with no
# route or name server asked (a .invalid name waits on the resolver, longer than a read timeout
# when it drops a query).
UNREACHABLE_ADDRESS = ("224.0.0.1", 9)


# What Locust's failure table shows for each kind: the exception's repr.
LOCUST_ERROR = {
    "wrong_reply": "WrongReply",
    "reset": "ConnectionResetError",
    "closed": "ClosedEarly",
    "timeout": "ReadTimeout",
    "refused": "ConnectionRefusedError",
    "unreachable": "OSError",  # ENETUNREACH
}
# The HTTP users' timeout is the socket's own (FastHttpUser's network_timeout); a connection
# closed before the response is geventhttpclient's HTTPConnectionClosed (so is a reset there).
HTTP_ERROR = {**LOCUST_ERROR, "timeout": "TimeoutError", "closed": "HTTPConnectionClosed"}
FAILURES = [
    ("lines", ("wrong_reply", "reset")),
    ("lines", ("timeout", "refused")),
    ("lines", ("closed", "unreachable")),
    ("http", ("wrong_reply", "timeout")),
    ("http", ("closed", "refused")),
    ("http", ("unreachable", "wrong_reply")),
]


@pytest.mark.parametrize(("framing", "kinds"), FAILURES, ids=[f"{f}-{'+'.join(k)}" for f, k in FAILURES])
def test_failures_become_locust_failures_of_their_kind(
    framing: str,
    kinds: tuple[str, str],
    bad_server: Callable[..., BadServer],
    locust: Callable[..., LocustProcess],
    refused_port: int,
) -> None:
    """The threaded (or threaded-http) user meets the first kind of failure, the async one the second."""
    names, users, method = PROTOCOLS[framing]
    http = framing == "http"
    special = {"refused": (HOST, refused_port), "unreachable": UNREACHABLE_ADDRESS}
    addresses = [special[k] if k in special else bad_server(k, http).address for k in kinds]
    # A read timeout long enough that a loaded machine's pause is not one (a server that answers
    # wrongly at once then counted two timeouts), short enough for the silent server's to come.
    run = locust(
        *headless(2, *targets(*addresses, names=names), "--read-timeout", "3"), stats=False, users=users
    )
    expected = dict(zip(names, kinds, strict=True))
    metrics = run.wait_metrics(
        lambda m: all(
            m.value("echo_client_failures_total", server=t, kind=k) >= 3 for t, k in expected.items()
        )
    )
    run.stop()
    report = run.error_report()
    for target, kind in expected.items():
        # Every request failed, and each failure is of the kind this server causes ...
        assert metrics.value("echo_client_failures_total", server=target) == requests(metrics, target)
        assert metrics.value("echo_client_failures_total", server=target, kind=kind) == requests(
            metrics, target
        )
        # ... and so is every Locust failure: "<count> <method> <target>: <exception repr>".
        errors = [line for line in report if f" {method} {target}: " in line]
        error = (HTTP_ERROR if http else LOCUST_ERROR)[kind]
        assert errors and all(f"{target}: {error}(" in line for line in errors), report


def test_http_413_is_a_server_error(
    start_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    """A message over the servers' --max-message-bytes: answered 413, a failure of kind server_error."""
    servers = http_servers(start_server, "--max-message-bytes", "16")
    args = targets(*(s.address for s in servers), names=HTTP_SERVERS)
    run = locust(*headless(2, *args, "--message-size", "32"), stats=False, users=HTTP_USERS)
    metrics = run.wait_metrics(
        lambda m: all(
            m.value("echo_client_failures_total", server=t, kind="server_error") >= 3 for t in HTTP_SERVERS
        )
    )
    run.stop()
    report = run.error_report()
    for target, server in zip(HTTP_SERVERS, servers, strict=True):
        sent = requests(metrics, target)
        assert metrics.value("echo_client_failures_total", server=target, kind="server_error") == sent
        assert metrics.value("echo_client_failures_total", server=target) == sent
        errors = [line for line in report if f" POST {target}: " in line]
        assert errors and all(f"{target}: ServerError('HTTP 413')" in line for line in errors), report
        # The server refused them as too large (and maybe more, whose 413 Locust stopped before reading).
        assert server.scrape().value("echo_requests_total", outcome="too_large") >= sent


# --- distributed -----------------------------------------------------------------


@LINES_PAIR
def test_master_and_workers_each_serve_metrics(
    module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess], tmp_path: Path
) -> None:
    servers = echo_servers(module_server, "lines")
    port = str(free_port())
    master = locust(*headless(4, *servers, "--master", "--expect-workers", "2", "--master-bind-host", HOST,
                              "--master-bind-port", port, "--csv", str(tmp_path / "master"), *PACED),
                    name="master")  # fmt: skip
    workers = [
        locust("--worker", "--master-host", HOST, "--master-port", port, *PACED, name=f"worker{i}")
        for i in range(2)
    ]
    # Each worker runs the users of one class here (4 users, 2 classes, 2 workers).
    for worker in workers:
        worker.wait_metrics(lambda m: sum(requests(m, t) for t in TARGETS) >= 20)
        assert worker.scrape().labels("echo_client_info") == {"role": "worker"}
    metrics = master.wait_metrics(lambda m: all(m.value("echo_client_users", server=t) == 2 for t in TARGETS))
    assert metrics.labels("echo_client_info") == {"role": "master"}
    assert requests(metrics, "threaded") == requests(metrics, "async") == 0  # the master runs no users
    # The workers' requests reach the master's stats in their reports, every 3 s; on quit Locust
    # gives their final reports only 0.5 s. Stop once the regular reports are in.
    master.wait_reported(TARGETS, 20)
    assert master.stop() == 0, master.log
    for worker in workers:
        assert worker.proc.wait(DEADLINE) == 0, worker.log
    stats = master.stats()
    assert all(stats[t]["num_requests"] >= 20 and stats[t]["num_failures"] == 0 for t in TARGETS), stats


# --- load shapes -----------------------------------------------------------------


SHAPE_LOG = re.compile(r"Shape test updating to (\d+) users at ([\d.]+) spawn rate")
SPAWNED_LOG = re.compile(r"All users spawned: .* \((\d+) total users\)")


def shape_run(run: LocustProcess, spawn_rate: float) -> tuple[list[int], list[int]]:
    """Let a shape run to its end (``-t``); return the user counts it asked for, then those it got.

    Both come from Locust's log, in order: the shape's decisions, and the
    totals running after each change. Each decision is at ``spawn_rate``, the
    one given to Locust (the web UI's ramp up): the shape does not pick its own.
    """
    assert run.wait() == 0, run.log
    log = run.log
    assert "Shape test completed" in log, log
    asked = SHAPE_LOG.findall(log)
    assert {float(rate) for _, rate in asked} == {spawn_rate}, asked
    return [int(users) for users, _ in asked], [int(n) for n in SPAWNED_LOG.findall(log)]


@LINES_PAIR
def test_step_ramp_adds_a_step_at_a_time_up_to_the_ceiling(
    module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    # Steps at 0, 1 and 2 s (Locust asks the shape once a second), then 2 s to hold the last one.
    # A step's users start at -r, the form's ramp up: 2 a second, each step within its second.
    args = ["--headless", "-u", "6", "-r", "2", "-t", "4s", "--step-users", "2", "--step-seconds", "1"]
    args += ["--only-summary", *PACED]
    run = locust(*args, *echo_servers(module_server, "lines"), files="locustfile.py,step_ramp.py")
    asked, running = shape_run(run, 2)
    assert asked == [2, 4, 6], asked
    assert running == [2, 4, 6], running
    assert all(run.stats()[t]["num_failures"] == 0 for t in TARGETS)


@LINES_PAIR
def test_spike_goes_up_and_back_to_the_baseline(
    module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    args = [
        "--headless",
        "-u",
        "2",
        "-r",
        "4",
        "-t",
        "4s",
        "--spike-users",
        "4",
        "--spike-at",
        "1",
        "--spike-seconds",
        "1",
        *PACED,
    ]
    run = locust(*args, *echo_servers(module_server, "lines"), files="locustfile.py,spike.py")
    asked, running = shape_run(run, 4)
    assert asked == [2, 6, 2], asked
    assert running == [2, 6, 2], running
    assert all(run.stats()[t]["num_failures"] == 0 for t in TARGETS)


# --- the capacity measurement ------------------------------------------------------


@MEASURING
def test_measure_capacity_runs_locust_without_importing_it(
    start_server: Callable[..., TestServer],
) -> None:
    server = start_server("async", "--framing", "lines", "--delay-ms", "0")
    code = (
        "import sys; from echolab.load.capacity import measure_capacity\n"
        f"rate = measure_capacity({HOST!r}, {server.port}, seconds=2, users=4)\n"
        "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'imported Locust'\n"
        "print(rate)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) > 0


# --- open loop (--target-rps) ----------------------------------------------------
# Nothing here measures a rate against the clock: an open loop shows as overlap (more
# requests in flight at the server than there are users, which no closed loop can do),
# a refused arrival as a count, the offered rate as the gauge the run exports.

OPEN_USERS = {"lines": ("AsyncUser",), "http": ("AsyncHttpUser",)}
OPEN_NAMES = {"lines": "async", "http": HTTP_SERVERS[1]}
SLOW = ("--delay-ms", "300")  # a reply takes 300 ms: two closed-loop users keep at most 2 in flight


def slow_server(module_server: Callable[..., TestServer], framing: str) -> tuple[TestServer, list[str]]:
    name = OPEN_NAMES[framing]
    server = module_server(name, *SLOW, *(["--workers", "1"] if framing == "http" else []))
    return server, targets(server.address, names=(name,))


@SLOW_SERVER
@pytest.mark.parametrize("framing", list(OPEN_USERS))
def test_an_open_loop_keeps_more_in_flight_than_it_has_users(
    framing: str, module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    server, address = slow_server(module_server, framing)
    name = OPEN_NAMES[framing]
    run = locust(*headless(2, *address, "--target-rps", "40"), users=OPEN_USERS[framing])
    # 40/s for 300 ms each: about 12 at once. Two users waiting for their replies would hold 2.
    server.wait_metrics(lambda m: m.value("echo_requests_in_flight") >= 6, timeout=DEADLINE)
    metrics = run.wait_metrics(lambda m: m.value("echo_client_requests_total", server=name) >= 20)
    assert metrics.value("echo_client_offered_rate", server=name) == 40  # 2 users, 20/s each
    assert metrics.value("echo_client_running") == 1
    assert metrics.value("echo_client_failures_total", server=name) == 0
    # A request is timed from when it was due: none can beat the server's delay.
    assert metrics.value("echo_client_request_duration_seconds_bucket", server=name, le="0.25") == 0
    assert run.stop() == 0, run.log


@SLOW_SERVER
@pytest.mark.parametrize("framing", list(OPEN_USERS))
def test_an_arrival_over_the_inflight_limit_is_not_sent(
    framing: str, module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    server, address = slow_server(module_server, framing)
    name = OPEN_NAMES[framing]
    limited = headless(1, *address, "--target-rps", "50", "--max-inflight", "3")
    run = locust(*limited, users=OPEN_USERS[framing], stats=False)
    metrics = run.wait_metrics(
        lambda m: m.value("echo_client_failures_total", server=name, kind="not_sent") >= 5
    )
    assert server.scrape().value("echo_requests_in_flight") <= 3
    # Not sent: counted as a request of the run, never as a latency.
    assert metrics.value("echo_client_request_duration_seconds_count", server=name) < metrics.value(
        "echo_client_requests_total", server=name
    )
    assert run.stop() == 1, run.log  # Locust's exit status when requests failed
    assert any("--max-inflight" in line and "not sent" in line for line in run.error_report()), run.log


@SLOW_SERVER
def test_a_closed_loop_offers_nothing_and_keeps_one_request_per_user(
    module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    server, address = slow_server(module_server, "lines")
    run = locust(*headless(2, *address), users=OPEN_USERS["lines"])
    metrics = run.wait_metrics(lambda m: m.value("echo_client_requests_total", server="async") >= 10)
    assert metrics.value("echo_client_offered_rate", server="async") == 0
    assert server.scrape().value("echo_requests_in_flight") <= 2
    assert run.stop() == 0, run.log


@SLOW_SERVER
def test_workers_get_their_share_from_the_master(
    module_server: Callable[..., TestServer], locust: Callable[..., LocustProcess]
) -> None:
    """The master divides --target-rps by the users it starts; each worker learns its users' rate."""
    server, address = slow_server(module_server, "lines")
    port = str(free_port())
    master = locust(*headless(2, *address, "--target-rps", "40", "--master", "--expect-workers", "2",
                              "--master-bind-host", HOST, "--master-bind-port", port),
                    name="master", users=OPEN_USERS["lines"])  # fmt: skip
    join = ("--worker", "--master-host", HOST, "--master-port", port)
    workers = [locust(*join, name=f"worker{i}", users=OPEN_USERS["lines"]) for i in range(2)]
    server.wait_metrics(lambda m: m.value("echo_requests_in_flight") >= 6, timeout=DEADLINE)
    for worker in workers:  # one user each, at half the target
        metrics = worker.wait_metrics(lambda m: m.value("echo_client_users", server="async") == 1)
        assert metrics.value("echo_client_offered_rate", server="async") == 20
    totals = master.wait_metrics(lambda m: m.value("echo_client_users", server="async") == 2)
    assert totals.value("echo_client_offered_rate", server="async") == 40
    assert master.stop() == 0, master.log
    for worker in workers:
        assert worker.proc.wait(DEADLINE) == 0, worker.log


# --- thresholds: the exit status of a run that ends by itself ------------------------

THRESHOLD_RUNS = [
    # (how the async server answers: "ok", or "timeout" for never), thresholds, exit status
    ("ok", ("--max-fail-ratio", "0"), 0),
    # A few requests time out (one per 0.5 s), many succeed (one per 10 ms): Locust alone exits 1.
    ("timeout", ("--max-fail-ratio", "0.5"), 0),
    ("timeout", ("--max-fail-ratio", "0.01"), 3),
    ("ok", ("--max-p95-ms", "1"), 4),  # every reply takes the servers' 10 ms
]


@TIMED_RUNS
@pytest.mark.parametrize(("answers", "thresholds", "status"), THRESHOLD_RUNS)
def test_a_timed_run_exits_with_the_thresholds_verdict(
    answers: str,
    thresholds: tuple[str, ...],
    status: int,
    module_server: Callable[..., TestServer],
    bad_server: Callable[..., BadServer],
    locust: Callable[..., LocustProcess],
) -> None:
    threaded = module_server("threaded", "--delay-ms", "10")
    other = module_server("async", "--delay-ms", "10") if answers == "ok" else bad_server(answers)
    # Only a server that never answers needs the short read timeout; against healthy servers a
    # loaded machine's pause of half a second must not count as a failure.
    read_timeout = "0.5" if answers == "timeout" else "10"
    args = [*targets(threaded.address, other.address), "--read-timeout", read_timeout, *thresholds]
    run = locust("--headless", "-u", "2", "-r", "2", "-t", "3s", *args, stats=False)
    assert run.wait() == status, run.log
    assert f"exit {status}" in run.log, run.log


def test_a_run_that_sent_nothing_fails_its_thresholds(locust: Callable[..., LocustProcess]) -> None:
    run = locust("--headless", "-u", "0", "-t", "2s", "--max-fail-ratio", "0.5", stats=False)
    assert run.wait() == 5, run.log
