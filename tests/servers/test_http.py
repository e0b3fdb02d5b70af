"""The HTTP echo servers, one suite run against both: gunicorn gthread and gunicorn + uvicorn-worker.

Real gunicorn processes on loopback, each with two workers, so every count
checked on /metrics is the sum over worker processes. Replies are checked
against literal bytes, counts exactly; a traceback in a server's log, or an
exit code other than 0 after SIGTERM, fails the test that started it.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.scrape import Metrics
from support.servers import HOST, HTTP_SERVERS, HttpTestServer, settled
from support.waiting import TIMEOUT

from echolab import interpreters

SERVERS = list(HTTP_SERVERS)
# Long enough that a scrape sees every request of a batch in flight at once,
# on a loaded machine: the tests assert on that ordering, not on durations.
HOLD = ("--delay-ms", "1000")

CASES = [
    (b"hello", b"HELLO"),
    (b"MiXeD cAsE 123 !?#", b"MIXED CASE 123 !?#"),
    (b"x" * 5000, b"X" * 5000),
    (b"", b""),  # an empty body is an empty message
    ("straße".encode(), b"STRASSE"),
    ("héllo wörld".encode(), "HÉLLO WÖRLD".encode()),
    ("emoji 🙂 stays".encode(), "EMOJI 🙂 STAYS".encode()),
]
INVALID_UTF8 = [
    (b"caf\xe9 au lait", b"CAF\xe9 AU LAIT"),
    (b"\xff\xfe binary", b"\xff\xfe BINARY"),
    (b"cut \xc3", b"CUT \xc3"),
]


# --- behaviour ---------------------------------------------------------------


def test_answers_correctly(http_server):
    before = http_server.scrape()
    for request, reply in CASES:
        assert http_server.echo(request) == reply
    delta = settled(http_server, before, len(CASES))
    expected = {
        'echo_requests_total{outcome="ok"}': len(CASES),
        'echo_requests_total{outcome="too_large"}': 0,
        'echo_requests_total{outcome="aborted"}': 0,
        "echo_request_duration_seconds_count": len(CASES),
        "echo_received_bytes_total": sum(len(r) for r, _ in CASES),
        "echo_sent_bytes_total": sum(len(r) for _, r in CASES),
        "echo_non_utf8_requests_total": 0,
    }
    assert delta.counts(expected) == expected


def test_invalid_utf8_is_uppercased_as_bytes_and_counted(http_server):
    before = http_server.scrape()
    for request, reply in INVALID_UTF8:
        assert http_server.echo(request) == reply
    delta = settled(http_server, before, len(INVALID_UTF8))
    expected = {'echo_requests_total{outcome="ok"}': len(INVALID_UTF8),
                "echo_non_utf8_requests_total": len(INVALID_UTF8)}  # fmt: skip
    assert delta.counts(expected) == expected


def test_routes(http_server):
    before = http_server.scrape()
    health = http_server.request("GET", "/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    assert http_server.request("GET", "/nowhere").status == 404
    assert http_server.request("POST", "/nowhere", b"x").status == 404
    wrong = http_server.request("GET", "/echo")
    assert (wrong.status, wrong.headers.get("allow")) == (405, "POST")
    assert http_server.request("POST", "/healthz", b"x").status == 405
    delta = http_server.idle_metrics() - before
    assert delta.value("echo_requests_total") == 0  # only echo requests are requests


def test_oversized_bodies_are_refused_and_counted(http_server):
    limit = 65536  # the default --max-message-bytes
    before = http_server.scrape()
    at_limit = b"a" * limit
    assert http_server.echo(at_limit) == at_limit.upper()
    declared = http_server.request("POST", "/echo", b"b" * (limit + 1))  # Content-Length over the limit
    assert (declared.status, declared.body) == (413, b"ERROR message too large\n")
    chunked = http_server.request("POST", "/echo", iter([b"c" * limit, b"c" * 100]))  # no length: chunked
    assert (chunked.status, chunked.body) == (413, b"ERROR message too large\n")
    assert http_server.echo(b"still serving") == b"STILL SERVING"
    delta = settled(http_server, before, 2)
    expected = {
        'echo_requests_total{outcome="ok"}': 2,
        'echo_requests_total{outcome="too_large"}': 2,
        "echo_received_bytes_total": limit + len(b"still serving"),
    }
    assert delta.counts(expected) == expected


def test_metrics_add_up_across_worker_processes(http_server):
    """Every worker counts in its own files; one scrape of the master shows their sum."""
    before = http_server.scrape()
    workers_before = http_server.worker_counts("echo_requests_total")
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        # Batches of concurrent connections until both workers have served some (they
        # race for each accept), bounded: sums over one worker would prove nothing.
        for _batch in range(20):
            replies = list(pool.map(http_server.echo, [b"batch %d" % i for i in range(16)]))
            assert replies == [b"BATCH %d" % i for i in range(16)]
            sent += len(replies)
            counts = http_server.worker_counts("echo_requests_total")
            if all(counts[pid] > workers_before.get(pid, 0) for pid in counts):
                break
    delta = settled(http_server, before, sent)
    assert delta.query('echo_requests_total{outcome="ok"}') == sent
    assert delta.query("echo_request_duration_seconds_count") == sent
    per_worker = {pid: count - workers_before.get(pid, 0) for pid, count in http_server.worker_counts(
        "echo_requests_total").items()}  # fmt: skip
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker
    assert sum(per_worker.values()) == sent

    after = http_server.scrape()
    info = after.labels("echo_server_info")
    assert info["server"] == http_server.name and info["workers"] == "2" and info["delay_ms"] == "20"
    assert info.get("model", info.get("loop")) == (
        "gthread" if http_server.name == "threaded-http" else "uvloop"
    )
    assert {k: info[k] for k in ("python", "gil")} == interpreters.here().facts()
    assert after.value("echo_threads", server=http_server.name) >= 3  # master + 2 workers, at least
    assert after.value("process_cpu_seconds_total") > 0
    assert after.value("process_resident_memory_bytes") > 0


@pytest.mark.parametrize("name", SERVERS)
def test_serves_concurrently(start_http, name):
    """50 requests at once: all 50 are in flight together before any is answered."""
    server = start_http(name, *HOLD)
    count = 50
    sent: list[float] = []
    answered: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> bytes:
        body = server.request(
            "POST", "/echo", b"req %d" % i, on_sent=lambda: sent.append(time.monotonic())
        ).body
        with lock:
            answered.append(time.monotonic())
        return body

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(one, i) for i in range(count)]
        # The ordering, seen by the server: every request has started before any has ended.
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == count)
        replies = [f.result() for f in futures]
    assert replies == [b"REQ %d" % i for i in range(count)]
    assert max(sent) < min(answered)  # and seen by the clients
    delta = settled(server, Metrics(), count)
    assert delta.query('echo_requests_total{outcome="ok"}') == count


def signalled_in_flight(server: HttpTestServer, signum: int, count: int) -> list[tuple[int, bytes]]:
    """``count`` echo requests ("held 0", ...) in flight at once, ``signum`` sent meanwhile: their replies."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(server.request, "POST", "/echo", b"held %d" % i) for i in range(count)]
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == count)
        server.send(signum)
        return [(f.result().status, f.result().body) for f in futures]


def all_answered(count: int) -> list[tuple[int, bytes]]:
    return [(200, b"HELD %d" % i) for i in range(count)]


@pytest.mark.parametrize("name", SERVERS)
def test_sigterm_drains_in_flight_requests(start_http, name):
    server = start_http(name, *HOLD)
    assert signalled_in_flight(server, signal.SIGTERM, 10) == all_answered(10)
    assert server.wait() == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize("name", SERVERS)
def test_client_reset_mid_request_is_counted_aborted(start_http, name):
    server = start_http(name, *HOLD)
    conn = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
    conn.sendall(b"POST /echo HTTP/1.1\r\nHost: echolab\r\nContent-Length: 4\r\n\r\ngone")
    server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == 1)
    # SO_LINGER 0: close with a reset, so the reply's write fails instead of being buffered.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    after = server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == 0)
    expected = {'echo_requests_total{outcome="aborted"}': 1, 'echo_requests_total{outcome="ok"}': 0}
    assert after.counts(expected) == expected
    assert server.echo(b"next") == b"NEXT"


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
@pytest.mark.parametrize("name", SERVERS)
def test_hup_usr1_and_usr2_lose_no_request(start_http, name, signum):
    """gunicorn's HUP (new workers, the old ones drain), USR1 (reopen logs), USR2 (ignored here)."""
    server = start_http(name, *HOLD)
    assert signalled_in_flight(server, signum, 10) == all_answered(10)
    assert server.running()
    assert server.echo(b"after") == b"AFTER"
    if signum == signal.SIGUSR2:
        server.wait_for_log("USR2 ignored")


@pytest.mark.parametrize("name", SERVERS)
def test_sigterm_with_stalled_clients_ends_within_the_drain(start_http, name):
    """Requests in flight are answered; clients stalled mid-request are cut at the drain timeout, and
    every worker exits by itself (gthread's used to be SIGKILLed: 'Perhaps out of memory?')."""
    server = start_http(name, "--delay-ms", "500", "--drain-timeout", "1")
    stalled = [socket.create_connection((HOST, server.port), timeout=TIMEOUT) for _ in range(6)]
    for sock in stalled:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: echolab\r\nContent-Length: 100\r\n\r\nabc")
    assert signalled_in_flight(server, signal.SIGTERM, 4) == all_answered(4)
    assert server.wait() == 0
    for sock in stalled:
        sock.close()
    # Each worker logged its own exit (gthread's arbiter, uvicorn's server), none was killed.
    exits = server.log.count("Worker exiting (pid") + server.log.count("Finished server process [")
    assert exits == 2 and "SIGKILL" not in server.log and "Traceback" not in server.log, server.log
