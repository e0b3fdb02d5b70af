"""``echolab downstream``: GET /delay/<ms> counted, its peak concurrency exact, bad input one line, a drain.

Every test runs the real service on loopback and calls it through httpx, the
client the servers will call it with. No test asserts how long a call took:
the counts and the peak of calls in progress at once are what the lab reads.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.scrape import Metrics, scrape, wait_for
from support.servers import clean_environment, run_command, taken_port
from support.wire import Connection

from echolab.lab.downstream import DOWNSTREAM, DownstreamProcess, delay_path
from echolab.lab.sweep import measure

REQUESTS = "echo_downstream_requests_total"
IN_PROGRESS = "echo_downstream_calls_in_progress"
PEAK = "echo_downstream_calls_in_progress_peak"


@pytest.fixture
def start_downstream(tmp_path: Path) -> Iterator[Callable[..., DownstreamProcess]]:
    """``start_downstream(*flags)``: a ready service; each must exit 0 on SIGTERM and log no traceback."""
    started: list[DownstreamProcess] = []

    def start(*flags: str) -> DownstreamProcess:
        log = tmp_path / f"downstream-{len(started)}.log"
        started.append(DownstreamProcess(flags, log=log, env=clean_environment()))
        return started[-1].start()

    yield start
    for process in started:
        code = process.stop() if process.running() else process.wait()
        assert code == 0, f"downstream exited with {code}:\n{process.log}"
        assert "Traceback" not in process.log, process.log


def settled(process: DownstreamProcess, answered: int) -> Metrics:
    """The counts once ``answered`` calls are counted and none is in progress."""
    return wait_for(
        process.metrics_url, lambda m: m.value(REQUESTS, code="200") >= answered and m.value(IN_PROGRESS) == 0
    )


async def call_all(url: str, calls: int, delay_ms: int, pool: int) -> list[httpx.Response]:
    """``calls`` concurrent GET /delay/<delay_ms> through one AsyncClient with a pool of ``pool``."""
    limits = httpx.Limits(max_connections=pool)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        return await asyncio.gather(*(client.get(f"/delay/{delay_ms}") for _ in range(calls)))


def test_the_peak_is_the_most_calls_at_once_the_client_let_through(start_downstream):
    service = start_downstream()
    # A pool of 10 lets 10 of 30 calls through at a time: the peak shows the pool, not the demand.
    replies = asyncio.run(call_all(service.url, 30, 200, pool=10))
    assert [(r.status_code, r.text) for r in replies] == [(200, "ok\n")] * 30
    after = settled(service, 30)
    assert after.value(PEAK) == 10
    # Then 50 at once: all of them in progress together.
    replies = asyncio.run(call_all(service.url, 50, 1000, pool=50))
    assert {r.status_code for r in replies} == {200}
    after = settled(service, 80)
    assert (after.value(PEAK), after.value(IN_PROGRESS), after.value(REQUESTS, code="200")) == (50, 0, 80)


def test_bad_requests_get_one_line_and_are_counted(start_downstream):
    service = start_downstream("--max-delay-ms", "1000")
    bad = ["/delay/abc", "/delay/-5", "/delay/1e3", "/delay/", "/delay/1000.5"]
    with httpx.Client(base_url=service.url, timeout=10) as client:
        replies = {path: client.get(path) for path in [*bad, "/nope"]}
        wrong_method = client.post("/delay/1")
        assert client.get("/delay/1000.0").status_code == 200  # the bound itself is allowed
    assert {path: r.status_code for path, r in replies.items()} == {**dict.fromkeys(bad, 400), "/nope": 404}
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "GET")
    for reply in [*replies.values(), wrong_method]:
        assert reply.text.endswith("\n") and reply.text.count("\n") == 1, reply.text
    assert "from 0 to 1000" in replies["/delay/1000.5"].text
    counts = scrape(service.metrics_url)
    assert {code: counts.value(REQUESTS, code=code) for code in ("200", "400", "404", "405")} == {
        "200": 1, "400": 5, "404": 1, "405": 1,
    }  # fmt: skip
    assert counts.value(PEAK) == 1


def exchange(service: DownstreamProcess, data: bytes) -> bytes:
    """``data`` sent on a new connection; everything the service answers until it closes."""
    with Connection(socket.create_connection(service.address, timeout=10)) as conn:
        conn.send(data)
        return conn.read_to_eof()


def test_it_speaks_http_1_1_as_callers_do_and_refuses_the_rest_in_one_line(start_downstream):
    service = start_downstream()
    # Pipelined: answered in order (the call first, though the 404 needs no wait); then the close asked for.
    call, missing = b"GET /delay/50 HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /nope HTTP/1.1\r\nHost: a\r\n"
    replies = exchange(service, call + missing + b"Connection: close\r\n\r\n")
    assert re.findall(rb"^HTTP/1.1 (\d+)", replies, re.M) == [b"200", b"404"], replies
    assert exchange(service, b"GET /delay/0 HTTP/1.0\r\n\r\n").endswith(b"connection: close\r\n\r\nok\n")
    too_large = b"GET /delay/1 HTTP/1.1\r\nX-Padding: " + b"a" * 9000 + b"\r\n\r\n"
    for request, status in ((too_large, b"431"), (b"HELLO\r\n\r\n", b"400")):
        reply = exchange(service, request)  # read to the end: the service closes after it
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status) and body.count(b"\n") == 1 and body.endswith(b"\n"), (
            reply
        )
    counts = scrape(service.metrics_url)
    assert [counts.value(REQUESTS, code=code) for code in ("200", "404", "431", "400")] == [2, 1, 1, 1]


def test_a_caller_that_leaves_ends_its_call(start_downstream):
    service = start_downstream()
    with Connection(socket.create_connection(service.address, timeout=10)) as conn:
        conn.send(b"GET /delay/60000 HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(service.metrics_url, lambda m: m.value(IN_PROGRESS) == 1)
    after = wait_for(service.metrics_url, lambda m: m.value(IN_PROGRESS) == 0)
    assert (after.value(PEAK), after.value(REQUESTS, code="200")) == (1, 0)


def test_sigterm_answers_the_calls_in_progress_and_exits_0(start_downstream):
    service = start_downstream()
    with httpx.Client(base_url=service.url, timeout=30) as client, ThreadPoolExecutor(10) as threads:
        calls = [threads.submit(client.get, "/delay/1000") for _ in range(10)]
        wait_for(service.metrics_url, lambda m: m.value(IN_PROGRESS) == 10)
        service.send(signal.SIGTERM)
        assert [(call.result().status_code, call.result().text) for call in calls] == [(200, "ok\n")] * 10
    assert service.wait() == 0
    assert "10 request(s) in flight answered" in service.log


def test_a_port_in_use_or_a_bad_setting_is_one_line_and_exit_2():
    with taken_port() as port:
        done = run_command("downstream", "--port", str(port), "--metrics-port", "0")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot start: Address already in use" in done.stderr, done.stderr
    done = run_command("downstream", env={"ECHO_DOWNSTREAM_MAX_DELAY_MS": "-1"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "ECHO_DOWNSTREAM_MAX_DELAY_MS" in done.stderr, done.stderr


def test_the_bench_client_measures_it():
    """What the benchmark calls for the service's capacity: the bench client's GET, the sweep's CPU."""
    (row,) = measure(DOWNSTREAM, [20], 10, 0.5, 0.1, delay_path(10))
    assert row.requests > 0 and row.errors == {} and row.problem is None
    assert row.server_cpu_percent > 0


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("--path", "/delay/1"), "--path is an HTTP request's: --framing http"),
        (("--framing", "http", "--path", "delay/1"), "not a path"),
    ],
)
def test_the_bench_clients_path_needs_http_and_a_path(flags: tuple[str, ...], problem: str):
    done = run_command("bench", "127.0.0.1:9", *flags)
    assert done.returncode == 2 and problem in done.stderr and done.stderr.count("\n") == 1, done.stderr
