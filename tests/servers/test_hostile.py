"""The TCP servers against hostile clients: floods nobody reads, lines sent a byte at a time, silent
clients holding every thread of the pool.

Every test runs against every TCP variant (conftest). Each attack is checked
for what it costs the server (memory below a generous bound, its connections
ended on time, each counted once, for its reason) and for what it costs
everyone else: a normal client is answered while the attack is still on.
"""

from __future__ import annotations

import contextlib

import pytest
from support.attack import (
    MiB,
    connect,
    established,
    flood,
    is_open,
    read_all,
    tree_rss,
    trickling,
)
from support.waiting import flag, poll_until, scaled

LINE = b"f" * 1023 + b"\n"
FLOODERS = 100


@pytest.mark.every_loop  # the loop's transports buffer, and pause reading
@pytest.mark.concurrent
@pytest.mark.framing("lines")
def test_clients_that_flood_and_never_read_cost_bounded_memory(start_server, variant):
    """100 clients pipeline 1 KiB lines as fast as the server takes them and read nothing, while
    each request waits out 100 ms: the server stops reading from each once it holds a bounded
    amount (docs/server-behavior.md: about 0.4 MB a connection at most), and serves everyone else.
    Before, the protocol API read on regardless: +1.7 GiB for the same attack. (The pool gets a
    thread per flooder: with fewer, the flooders' requests hold every thread, as any busy client
    does, and the newcomer waits in the backlog; docs/server-behavior.md.)"""
    pool = ("--threads", str(FLOODERS + 1)) if variant.kind == "pool" else ()
    server = start_server(variant, "--delay-ms", "100", *pool)
    before = tree_rss(server.pid)
    clients = [connect(server.port) for _ in range(FLOODERS)]
    try:
        taken = flood(clients, LINE * 64, budget=16 * MiB)
        grown = tree_rss(server.pid) - before
        assert server.exchange(b"meanwhile") == b"MEANWHILE\n"
        assert all(is_open(sock) for sock in clients)  # answered while the attack is on
        assert grown < 100 * MiB, (
            f"RSS +{grown / MiB:.0f} MiB after {FLOODERS} clients sent {taken / MiB:.0f} MiB"
        )
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.every_loop
@pytest.mark.framing("lines")
def test_clients_that_never_read_are_ended_after_the_idle_timeout_and_counted_once(start_server, variant):
    """Their replies fill the socket buffers, then wait in the server: for the idle timeout, then the
    connection is reset (a close would wait for ever for a reader that never comes)."""
    server = start_server(variant, "--delay-ms", "0", "--idle-timeout", flag(4))
    count = 5 if variant.concurrent else 1
    before = server.scrape()
    clients = [connect(server.port) for _ in range(count)]
    try:
        flood(clients, LINE * 64, budget=256 * MiB)  # until the server takes no more
        poll_until(lambda: established(server.pid, server.port), lambda held: held == 0,
                   what="the clients that never read ended")  # fmt: skip
    finally:
        for sock in clients:
            sock.close()
    delta = server.idle_metrics() - before
    expected = {
        'echo_connections_timed_out_total{reason="not_reading"}': count,
        "echo_connections_timed_out_total": count,
    }
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_lines_sent_a_byte_at_a_time_are_cut_at_the_request_deadline(start_server, variant):
    """Slowloris: a byte every 0.25 s would keep a per-byte idle timer (4 s) from ever firing; the
    request deadline, 2 s from a line's first byte, ends each such line with an error line (all
    three scaled)."""
    server = start_server(variant, "--idle-timeout", flag(4), "--request-timeout", flag(2))
    count = 10 if variant.concurrent else 1
    endless = b"s" * 1000 + b"\n"
    before = server.scrape()
    with contextlib.ExitStack() as stack:
        trickles = [
            stack.enter_context(trickling(server.port, endless, every=scaled(0.25))) for _ in range(count)
        ]
        if variant.concurrent:
            assert server.exchange(b"meanwhile") == b"MEANWHILE\n"
            assert all(is_open(t.sock) for t in trickles)  # answered while the attack is on
        for trickle in trickles:
            assert read_all(trickle.sock) == b"ERROR request timeout\n"
            assert trickle.sent < len(endless)  # cut while still sending
    delta = server.idle_metrics() - before
    expected = {
        'echo_connections_timed_out_total{reason="request_deadline"}': count,
        "echo_connections_timed_out_total": count,
        'echo_requests_total{outcome="ok"}': 1 if variant.concurrent else 0,
    }
    assert delta.counts(expected) == expected


def test_silent_clients_holding_every_pool_thread_are_cut_at_the_idle_timeout(start_server):
    """The pool takes a connection only when a thread is free: --threads clients that never send
    hold them all, and a newcomer waits in the backlog until the idle timeout frees a thread."""
    server = start_server("threaded", "--model", "pool", "--threads", "2", "--idle-timeout", flag(2))
    before = server.scrape()
    silent = [connect(server.port) for _ in range(2)]
    try:
        server.wait_metrics(lambda m: m.value("echo_connections_active") == 2)
        with server.connect() as waiting:
            waiting.send(b"waiting\n")
            assert waiting.line() == b"WAITING\n"
            # Served only once a silent one was cut: their threads are the only ones.
            assert not all(is_open(sock) for sock in silent)
        assert [read_all(sock) for sock in silent] == [b"", b""]
    finally:
        for sock in silent:
            sock.close()
    delta = server.idle_metrics() - before
    expected = {
        'echo_connections_timed_out_total{reason="idle"}': 2,
        'echo_requests_total{outcome="ok"}': 1,
    }
    assert delta.counts(expected) == expected
