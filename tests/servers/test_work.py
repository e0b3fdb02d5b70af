"""The work model: CPU, blocking calls and IO per request, on every server, and what each model does with it.

No test asserts a speed. CPU is checked as CPU time per request, within
10% of the setting; concurrency as overlap and order: requests in work at once
(the in-flight gauge, the offload pool's gauges), and whether the server's
own request intervals could have overlapped at all (their durations summed
against the wall time that contains them).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.parallel import MEASURING
from support.scrape import Metrics
from support.servers import TestServer, settled

from echolab.metrics import LAG_BUCKETS

# Every server of the catalogue, and the async server in both APIs.
SERVERS = [
    ("threaded",),
    ("async", "--api", "streams"),
    ("async", "--api", "protocol"),
    ("threaded-http", "--workers", "1"),
    ("async-http", "--workers", "1"),
]
ASYNC_APIS = [("async", "--api", "streams"), ("async", "--api", "protocol")]


def ids(servers: list[tuple[str, ...]]) -> list[str]:
    return ["-".join(s for s in server if not s.startswith("-")) for server in servers]


def echo(server: TestServer, message: bytes) -> bytes:
    """One request on a connection of its own, whatever the server speaks."""
    if server.framing == "http":
        return server.echo(message)  # type: ignore[attr-defined,no-any-return]
    return server.exchange(message).rstrip(b"\n")


def concurrently(server: TestServer, count: int) -> tuple[list[bytes], float]:
    """``count`` requests at once, each on its own connection: the replies, and the wall time they took."""
    with ThreadPoolExecutor(count) as pool:
        started = time.perf_counter()
        replies = list(pool.map(lambda i: echo(server, b"request %d" % i), range(count)))
        return replies, time.perf_counter() - started


@MEASURING
@pytest.mark.parametrize("server_args", SERVERS, ids=ids(SERVERS))
def test_cpu_work_costs_its_setting_in_process_cpu_time(start_server, server_args):
    cpu_ms, requests = 20, 40
    server = start_server(*server_args, "--cpu-ms", str(cpu_ms), "--delay-ms", "0")
    before = server.scrape()
    for i in range(requests):
        assert echo(server, b"spin %d" % i) == b"SPIN %d" % i
    delta = settled(server, before, requests)
    expected = {'echo_requests_total{outcome="ok"}': requests}
    assert delta.counts(expected) == expected
    assert delta.query('echo_work_seconds_total{kind="cpu"}') == pytest.approx(requests * cpu_ms / 1000)
    per_request_ms = 1000 * delta.value("process_cpu_seconds_total") / requests
    # The work runs until the thread's own CPU clock has moved by the setting: never under it (work
    # timed by the wall clock would be, on a busy machine). The server's own cost per request (a
    # connection, parsing, metrics, the scrapes) comes on top: 1 to 2 ms for the HTTP servers with
    # every core busy, far under the setting again that work done twice would add.
    assert 0.9 * cpu_ms < per_request_ms < 1.5 * cpu_ms, per_request_ms


@pytest.mark.parametrize("server_args", ASYNC_APIS, ids=ids(ASYNC_APIS))
def test_blocking_work_on_the_loop_serialises_requests_and_the_lag_shows_it(start_server, server_args):
    blocking, count = 0.3, 10
    server = start_server(*server_args, "--blocking-ms", str(int(blocking * 1000)), "--delay-ms", "0")
    before = server.scrape()
    replies, wall = concurrently(server, count)
    assert replies == [b"REQUEST %d" % i for i in range(count)]
    delta = settled(server, before, count)
    durations = delta.value("echo_request_duration_seconds_sum")
    # Each request blocked for its whole call...
    assert durations >= count * blocking
    # ...and no two of them at once: intervals that do not overlap, all inside the client's
    # wall time, cannot add up to more than it (overlapping ones would add up to ~count times it).
    assert durations <= wall
    assert delta.query('echo_work_seconds_total{kind="blocking"}') == pytest.approx(count * blocking)
    expected = {"echo_offload_threads_busy": 0, "echo_offload_tasks_queued": 0}
    assert delta.counts(expected) == expected
    # The loop's lag probe, late by up to a blocking call each time it ran, lands in the high buckets.
    high = next(bound for bound in LAG_BUCKETS if bound >= blocking / 6)
    late = delta.value("echo_event_loop_lag_seconds_count") - delta.value(
        "echo_event_loop_lag_seconds_bucket", le=str(high)
    )
    assert late >= 1


OFFLOADING = [*ASYNC_APIS, ("async-http", "--workers", "1")]


@pytest.mark.parametrize("server_args", OFFLOADING, ids=ids(OFFLOADING))
def test_offloaded_blocking_work_overlaps_up_to_the_pool_size(start_server, server_args):
    threads, count = 4, 7
    server = start_server(
        *server_args, "--blocking-ms", "1000", "--delay-ms", "0", "--offload", "thread",
        "--offload-threads", str(threads),
    )  # fmt: skip
    before = server.scrape()
    seen_busy = []
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(echo, server, b"offloaded %d" % i) for i in range(count)]

        def full(m: Metrics) -> bool:
            seen_busy.append(m.value("echo_offload_threads_busy"))
            return m.value("echo_offload_threads_busy") == threads and (
                m.value("echo_offload_tasks_queued") == count - threads
            )

        # While the first calls block, the pool runs as many as it has threads, the rest wait.
        server.wait_metrics(full)
        replies = [f.result() for f in futures]
    assert replies == [b"OFFLOADED %d" % i for i in range(count)]
    assert max(seen_busy) == threads
    delta = settled(server, before, count)
    assert delta.query('echo_work_seconds_total{kind="blocking"}') == pytest.approx(count * 1.0)
    after = server.scrape()
    assert (after.value("echo_offload_threads_busy"), after.value("echo_offload_tasks_queued")) == (0, 0)


THREADED = [("threaded",), ("threaded-http", "--workers", "1")]


@pytest.mark.parametrize("server_args", THREADED, ids=ids(THREADED))
def test_threads_overlap_blocking_work_across_connections(start_server, server_args):
    count = 8
    server = start_server(*server_args, "--blocking-ms", "1000", "--delay-ms", "0")
    before = server.scrape()
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(echo, server, b"blocked %d" % i) for i in range(count)]
        # Every request is in its blocking call before any of them returns.
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == count)
        replies = [f.result() for f in futures]
    assert replies == [b"BLOCKED %d" % i for i in range(count)]
    delta = settled(server, before, count)
    assert delta.query('echo_work_seconds_total{kind="blocking"}') == pytest.approx(count * 1.0)


def test_exponential_io_is_drawn_per_request_around_its_mean(start_server):
    delay_ms, requests = 5, 200
    server = start_server("async", "--delay-ms", str(delay_ms), "--delay-distribution", "exponential")
    before = server.scrape()
    with server.connect() as conn:
        for i in range(requests):
            conn.send(b"%d\n" % i)
            assert conn.line() == b"%d\n" % i
    delta = server.idle_metrics() - before
    io = delta.query('echo_work_seconds_total{kind="io"}')
    # The sum of 200 draws is within a few standard deviations (mean / sqrt(200)) of 200 means,
    # and, unlike a fixed delay, not exactly that.
    assert io == pytest.approx(requests * delay_ms / 1000, rel=0.5)
    assert io != pytest.approx(requests * delay_ms / 1000, rel=1e-6)
