"""The benchmark client against real servers: what it reports must be what happened."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading

import pytest
from support.servers import run_command

from echolab.catalogue import server
from echolab.lab.sweep import measure
from echolab.lab.variants import Variant, of, running
from echolab.launcher import free_port


def variant(name: str, framing: str = "lines") -> Variant:
    return dataclasses.replace(of(server(name)), framing=framing)


def bench(port: int, *args: str) -> dict:
    done = run_command("bench", f"127.0.0.1:{port}", "--json", "--warmup", "0", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("kind", "framing"),
    [
        ("async", "lines"),
        ("async", "oneshot"),
        ("threaded", "lines"),
        ("threaded", "oneshot"),
        ("async-http", "http"),
        ("threaded-http", "http"),
    ],
)
def test_closed_loop_counts_every_reply(kind: str, framing: str) -> None:
    with running(variant(kind, framing), delay_ms=10) as (port, _):
        result = bench(
            port, "--framing", framing, "--connections", "20", "--requests", "200", "--delay-hint-ms", "10"
        )
    assert result["errors"] == {}
    assert result["requests"] >= 200
    assert result["connected"] == 20
    assert result["bound"] == 2000.0
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_open_loop_sends_at_the_asked_rate() -> None:
    with running(variant("async"), delay_ms=5) as (port, _):
        result = bench(port, "--rate", "400", "--connections", "10", "--duration", "1")
    assert result["mode"] == "open"
    assert result["errors"] == {}
    # Requests leave on a schedule, whatever the server does: 400/s for 1 s.
    assert 300 <= result["requests"] <= 500


def test_open_loop_needs_lines() -> None:
    done = run_command("bench", "127.0.0.1:1", "--rate", "10", "--framing", "oneshot", timeout=30)
    assert done.returncode != 0
    assert "--rate" in done.stderr


def test_refused_connections_are_counted_as_errors() -> None:
    result = bench(free_port(), "--connections", "2", "--duration", "0.5")
    assert result["requests"] == 0
    assert result["errors"].get("refused", 0) > 0


def test_wrong_replies_are_counted_not_timed() -> None:
    """A server that answers every line in lower case: every request is a wrong reply."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo_lowercase, args=(conn,), daemon=True).start()

    def echo_lowercase(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data.lower())

    threading.Thread(target=serve, daemon=True).start()
    try:
        result = bench(port, "--connections", "2", "--duration", "0.5")
    finally:
        listener.close()
    assert result["requests"] == 0
    assert result["errors"].get("wrong_reply", 0) > 0


def test_sweep_samples_the_server() -> None:
    (row,) = measure(variant("threaded"), [8], delay_ms=10, duration=1.0, warmup=0.2)
    assert row.requests > 0
    assert row.server_threads >= 8  # a thread per connection, sampled while they were open
    assert row.server_rss_mb > 0
