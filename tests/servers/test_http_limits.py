"""The HTTP servers against hostile clients: head limits, deadlines, clients that do not read or leave.

One suite run against both servers. Each attack is checked for what it
costs the server (memory below a generous bound, its connection ended) and
for what it costs everyone else: a normal request is answered while the
attack is still on. A traceback in a server's log fails the test
(conftest), so a client going away must leave none.
"""

from __future__ import annotations

import socket

import pytest
from support.attack import (
    MiB,
    connect,
    established,
    flood,
    is_open,
    post,
    read_all,
    read_response,
    request_status,
    status,
    tree_rss,
    trickling,
    workers,
)
from support.servers import HTTP_SERVERS
from support.waiting import TIMEOUT, flag, poll_until, scaled

from echolab.servers.gunicorn import LIMIT_REQUEST_FIELD_SIZE, LIMIT_REQUEST_FIELDS, LIMIT_REQUEST_LINE

SERVERS = list(HTTP_SERVERS)
ONE_WORKER = ("--workers", "1")  # so that an attack and the normal client meet in the same worker


def head(target: bytes = b"/healthz", fields: list[bytes] | None = None) -> bytes:
    """A GET whose response is followed by a close (Host and Connection count as fields)."""
    lines = [b"GET %s HTTP/1.1" % target, b"Host: echolab", b"Connection: close", *(fields or [])]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_head_limits_are_gunicorns(http_server):
    """Request line 4,094 bytes, field line 8,190 with CRLF, 100 fields: at the limit 200, past it 414/431."""
    port = http_server.port
    query = LIMIT_REQUEST_LINE - len(b"GET /healthz? HTTP/1.1")
    assert request_status(port, head(b"/healthz?" + b"q" * query)) == 200
    assert request_status(port, head(b"/healthz?" + b"q" * (query + 1))) == 414
    value = LIMIT_REQUEST_FIELD_SIZE - len(b"X-Big: \r\n")
    assert request_status(port, head(fields=[b"X-Big: " + b"v" * value])) == 200
    assert request_status(port, head(fields=[b"X-Big: " + b"v" * (value + 1)])) == 431
    extra = LIMIT_REQUEST_FIELDS - 2  # beside Host and Connection
    assert request_status(port, head(fields=[b"X-%d: v" % i for i in range(extra)])) == 200
    assert request_status(port, head(fields=[b"X-%d: v" % i for i in range(extra + 1)])) == 431
    assert request_status(port, head(fields=[b"X-Big: " + b"v" * MiB])) == 431
    assert http_server.echo(b"still serving") == b"STILL SERVING"


@pytest.mark.parametrize("name", SERVERS)
def test_an_endless_header_is_cut_at_the_head_limit(start_http, name):
    """Streaming one header for ever gets 431 after a bounded size; no worker is killed."""
    server = start_http(name, *ONE_WORKER)
    pids, before = workers(server.pid), tree_rss(server.pid)
    with connect(server.port) as attacker:
        attacker.sendall(b"GET /healthz HTTP/1.1\r\nHost: echolab\r\nX-Endless: ")
        taken = flood([attacker], b"a" * 65536, budget=256 * MiB)
        attacker.setblocking(True)
        attacker.settimeout(TIMEOUT)
        assert status(attacker) == 431
    # The head limit is 0.8 MiB; the rest is what the kernel's socket buffers took.
    assert taken < 64 * MiB, f"the server read {taken / MiB:.0f} MiB of one header"
    assert tree_rss(server.pid) - before < 50 * MiB
    assert workers(server.pid) == pids
    assert server.echo(b"after") == b"AFTER"


@pytest.mark.parametrize("name", SERVERS)
def test_silent_connections_hold_nothing_and_close_after_the_idle_timeout(start_http, name):
    """Ten connections that never send: a request is answered while they are open, then they are closed."""
    threads = ("--http-threads", "2") if name == "threaded-http" else ()
    server = start_http(name, *ONE_WORKER, *threads, "--idle-timeout", flag(8))
    silent = [connect(server.port) for _ in range(10)]
    try:
        assert server.echo(b"meanwhile") == b"MEANWHILE"
        assert all(is_open(sock) for sock in silent)
        for sock in silent:
            assert read_all(sock) == b""  # closed, without a word
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize("name", SERVERS)
def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(start_http, name):
    server = start_http(name, "--idle-timeout", flag(4))
    with connect(server.port) as sock:
        sock.sendall(post(b"once"))
        assert read_response(sock) == (200, b"ONCE")
        assert read_all(sock) == b""


@pytest.mark.parametrize("name", SERVERS)
def test_requests_that_do_not_arrive_in_time_get_408(start_http, name):
    """A stalled head, a stalled body, a head trickled a byte at a time: 408 at the request deadline."""
    server = start_http(name, "--request-timeout", flag(4))
    before = server.scrape()
    stalled_head, stalled_body = connect(server.port), connect(server.port)
    with stalled_head, stalled_body, trickling(server.port, post(b"t" * 100), every=scaled(0.2)) as trickle:
        stalled_head.sendall(b"POST /echo HTTP/1.1\r\nHost: echolab\r\n")
        stalled_body.sendall(b"POST /echo HTTP/1.1\r\nHost: echolab\r\nContent-Length: 100\r\n\r\nabc")
        assert server.echo(b"meanwhile") == b"MEANWHILE"
        assert [status(s) for s in (stalled_head, stalled_body, trickle.sock)] == [408, 408, 408]
        assert trickle.sent < len(post(b"t" * 100))  # cut while still sending
    delta = server.idle_metrics() - before
    assert delta.query("echo_requests_total") == 1  # the three were never requests


@pytest.mark.parametrize("name", SERVERS)
def test_clients_that_pipeline_and_never_read_cost_bounded_memory(start_http, name):
    """50 clients pipeline 60 KB POSTs and read nothing: the server stops reading them, memory stays
    bounded, everyone else is served, and each is ended after the idle timeout. No delay: the
    replies fill every buffer on the way as fast as the server can make them."""
    server = start_http(name, *ONE_WORKER, "--idle-timeout", flag(12), "--delay-ms", "0")
    before = tree_rss(server.pid)
    clients = [connect(server.port) for _ in range(50)]
    try:
        taken = flood(clients, post(b"p" * 60000), budget=16 * MiB)
        grown = tree_rss(server.pid) - before
        assert server.echo(b"meanwhile") == b"MEANWHILE"
        assert grown < 150 * MiB, f"RSS +{grown / MiB:.0f} MiB after 50 clients sent {taken / MiB:.0f} MiB"
        poll_until(lambda: established(server.pid, server.port), lambda held: held == 0,
                   what="the non-reading clients ended")  # fmt: skip
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.parametrize("name", SERVERS)
def test_clients_that_leave_mid_pipeline_leave_no_traceback(start_http, name):
    """They leave while replies to them wait to be written and more requests wait behind."""
    server = start_http(name, *ONE_WORKER, "--delay-ms", "100")
    clients = [connect(server.port) for _ in range(20)]
    flood(clients, post(b"p" * 60000), budget=16 * MiB)
    for sock in clients:
        sock.close()
    server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == 0)
    assert server.echo(b"after") == b"AFTER"
    assert "Traceback" not in server.log


@pytest.mark.parametrize("name", SERVERS)
def test_clients_that_keep_their_socket_after_connection_close_do_not_stall_the_worker(start_http, name):
    """Each asks for Connection: close, then neither reads nor closes (gthread used to wait 2 s on each)."""
    server = start_http(name, *ONE_WORKER)
    holders = [connect(server.port) for _ in range(10)]
    try:
        for sock in holders:
            sock.sendall(head())
        assert server.echo(b"meanwhile") == b"MEANWHILE"
        assert [status(sock) for sock in holders] == [200] * 10
    finally:
        for sock in holders:
            sock.close()


def test_a_request_then_a_half_close_is_answered(http_server):
    with connect(http_server.port) as sock:
        sock.sendall(post(b"first") + post(b"second"))
        sock.shutdown(socket.SHUT_WR)
        assert read_response(sock) == (200, b"FIRST")
        assert read_response(sock) == (200, b"SECOND")
        assert read_all(sock) == b""


def test_async_http_serves_exactly_max_connections_at_once(start_http):
    """uvicorn counts the new connection against limit_concurrency: it is set one higher, so that
    --max-connections 3 admits three connections (gthread instead stops accepting: they wait)."""
    server = start_http("async-http", *ONE_WORKER, "--max-connections", "3")
    held = [connect(server.port) for _ in range(2)]
    try:
        assert request_status(server.port, head()) == 200  # the third
        held.append(connect(server.port))
        assert request_status(server.port, head()) == 503  # a fourth
    finally:
        for sock in held:
            sock.close()
