"""The benchmark client against real servers: what it reports must be what happened."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pty
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
from support.servers import clean_environment, run_command
from support.waiting import poll_until

from echolab.catalogue import server
from echolab.lab.contenders import Contender, of, running
from echolab.lab.sweep import measure
from echolab.load.bench_result import UNMEASURED


def variant(name: str, framing: str = "lines") -> Contender:
    return dataclasses.replace(of(server(name)), framing=framing)


def strict_json(text: str) -> dict:
    """JSON as a strict parser reads it: NaN or Infinity fail."""

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON")

    return json.loads(text, parse_constant=reject)


def bench(port: int, *args: str, expect: int = 0) -> dict:
    done = run_command("bench", f"127.0.0.1:{port}", "--json", "--warmup", "0", *args)
    assert done.returncode == expect, done.stderr
    assert "Traceback" not in done.stderr
    return strict_json(done.stdout)


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
    assert result["problem"] is None
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    # The histogram holds every measured request, in rising buckets.
    edges = [edge for edge, _ in result["histogram_ms"]]
    assert edges == sorted(edges)
    assert sum(count for _, count in result["histogram_ms"]) == result["requests"]
    assert result["client_cpu_percent"] > 0
    assert result["machine"]["cores"] == os.cpu_count()
    assert result["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))


# --- the open loop -------------------------------------------------------------


class HoldingServer:
    """Answers each line after ``hold`` seconds; counts per connection the most requests outstanding at once.

    While it holds a request it keeps reading, so a request sent before the
    previous reply (pipelining) is seen as a second outstanding one.
    """

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.most_outstanding: list[int] = []  # one entry per connection, when it closes
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        buffer, pending, most = b"", [], 0  # pending: (reply due at, line)
        with conn, contextlib.suppress(OSError):
            while True:
                wait = max(0.0, pending[0][0] - time.monotonic()) if pending else None
                readable, _, _ = select.select([conn], [], [], wait)
                if readable:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        pending.append((time.monotonic() + self.hold, line))
                        most = max(most, len(pending))
                while pending and pending[0][0] <= time.monotonic():
                    conn.sendall(pending.pop(0)[1].upper() + b"\n")
        with self.lock:
            self.most_outstanding.append(most)

    def loaded(self) -> list[int]:
        """The most outstanding at once on each closed connection that carried requests (not the probe)."""
        with self.lock:
            return [most for most in self.most_outstanding if most]

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def holding_server(hold: float) -> Iterator[HoldingServer]:
    scripted = HoldingServer(hold)
    try:
        yield scripted
    finally:
        scripted.close()


def test_open_loop_keeps_one_request_outstanding_per_connection() -> None:
    # 10 connections, 300 req/s, 20 ms a reply: each connection is busy 60% of
    # the time, so a client that sent on a busy connection would be caught.
    with holding_server(hold=0.02) as scripted:
        result = bench(
            scripted.port, "--rate", "300", "--connections", "10", "--duration", "1.5",
            "--delay-hint-ms", "20",
        )  # fmt: skip
        # Every connection's most outstanding is counted as it closes, maybe after the client exits.
        poll_until(scripted.loaded, lambda loaded: len(loaded) == 10, what="the 10 connections closed")
    assert max(scripted.loaded()) == 1
    assert result["mode"] == "open"
    assert result["rate"] == 300
    assert result["errors"] == {}
    assert result["requests"] > 0
    assert result["bound"] == 300  # the open loop's bound: the offered rate


def test_open_loop_reports_offered_and_achieved_and_warns_when_connections_cannot_carry_it() -> None:
    # 4 connections at 50 ms carry at most 80 req/s: the other 120 req/s queue in the client.
    with holding_server(hold=0.05) as scripted:
        done = run_command(
            "bench", f"127.0.0.1:{scripted.port}", "--rate", "200", "--connections", "4", "--duration", "1",
            "--warmup", "0", "--delay-hint-ms", "50",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "offered 200 req/s, achieved" in done.stdout
    assert "carry at most 80 req/s" in done.stdout
    assert "still queued in the client" in done.stdout


def test_open_loop_needs_persistent_connections() -> None:
    done = run_command("bench", "127.0.0.1:1", "--rate", "10", "--framing", "oneshot", timeout=30)
    assert done.returncode == 2
    assert "--rate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- failing clearly ----------------------------------------------------------------


def test_nothing_listening_fails_at_once_in_one_line(refused_port: int) -> None:
    port = refused_port
    done = run_command("bench", f"127.0.0.1:{port}", "--duration", "30", "--json", timeout=20)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"echolab bench: cannot connect to 127.0.0.1:{port}: connection refused: is a server listening there?"
    ]


@pytest.mark.parametrize(
    ("target", "says"),
    [("localhost", "needs a port"), ("localhost:http", "port must be a number"), (":9091", "needs a port")],
)
def test_a_bad_target_is_one_line_and_exit_2(target: str, says: str) -> None:
    done = run_command("bench", target, timeout=20)
    assert done.returncode == 2
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_reply_is_a_failure_with_null_figures() -> None:
    """A server that answers every line in lower case: nothing succeeds, exit 1, JSON with null, never NaN."""
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
        result = bench(port, "--connections", "2", "--duration", "0.5", expect=1)
    finally:
        listener.close()
    assert result["requests"] == 0
    assert result["errors"].get("wrong_reply", 0) > 0
    assert set(result["latency_ms"].values()) == {None}
    assert result["throughput"] == 0
    assert result["problem"].startswith("no request succeeded")


def test_a_oneshot_server_is_named_as_a_framing_mismatch() -> None:
    with running(variant("async", "oneshot"), delay_ms=10) as (port, _):
        done = run_command(
            "bench", f"127.0.0.1:{port}", "--framing", "lines", "--connections", "5", "--duration", "0.5",
            "--warmup", "0",
        )  # fmt: skip
    assert done.returncode == 1
    assert "closed the connection after each reply: it speaks oneshot framing" in done.stderr
    assert "Traceback" not in done.stderr
    # Its replies are not the server's throughput: no share of the bound is shown for them.
    (bound,) = [line for line in done.stdout.splitlines() if line.startswith("little's law bound")]
    assert bound.endswith(f"achieved {UNMEASURED}"), done.stdout


def lower_fd_limit(limit: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def test_the_clients_own_fd_limit_is_named_not_blamed_on_the_server() -> None:
    with running(variant("async"), delay_ms=10) as (port, _):
        done = subprocess.run(
            [sys.executable, "-m", "echolab", "bench", f"127.0.0.1:{port}", "--json", "--connections", "300",
             "--duration", "0.5", "--warmup", "0", "--timeout", "2"],
            capture_output=True, text=True, timeout=90, env=clean_environment(),
            preexec_fn=lower_fd_limit(100),
        )  # fmt: skip
    result = strict_json(done.stdout)
    assert result["connected"] < 300
    assert result["connect_errors"].get("client_fd_limit", 0) > 0
    assert "other" not in result["errors"]
    assert any("ulimit -n" in note for note in result["notes"])
    assert "ulimit -n" in done.stderr


# --- interrupts and progress ---------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_bench_reports_what_it_measured_as_partial(signum: int, code: int) -> None:
    with running(variant("async"), delay_ms=10) as (port, server_process):
        client = subprocess.Popen(
            [sys.executable, "-m", "echolab", "bench", f"127.0.0.1:{port}", "--json", "--connections", "5",
             "--duration", "60", "--warmup", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_environment(),
        )  # fmt: skip
        try:
            serving = psutil.Process(server_process.pid)
            poll_until(serving.net_connections, lambda held: len(held) >= 6,  # listener + 5
                       what="the client's 5 connections open", timeout=30)  # fmt: skip
            client.send_signal(signum)
            out, err = client.communicate(timeout=30)
        finally:
            client.kill()
    assert client.returncode == code, err
    assert "Traceback" not in err
    result = strict_json(out)
    assert result["partial"] is True
    assert result["interrupted"] == signal.Signals(signum).name


def test_progress_goes_to_a_terminals_stderr_not_to_the_json() -> None:
    with running(variant("async"), delay_ms=10) as (port, _):
        leader, follower = pty.openpty()
        try:
            client = subprocess.Popen(
                [sys.executable, "-m", "echolab", "bench", f"127.0.0.1:{port}", "--json",
                 "--connections", "5", "--duration", "4", "--warmup", "0"],
                stdout=subprocess.PIPE, stderr=follower, text=True, env=clean_environment(),
            )  # fmt: skip
            os.close(follower)
            out, _ = client.communicate(timeout=60)
            shown = b""
            with contextlib.suppress(OSError):  # EIO once the client has exited
                while select.select([leader], [], [], 1)[0] and (chunk := os.read(leader, 4096)):
                    shown += chunk
        finally:
            os.close(leader)
    assert client.returncode == 0
    assert b"measuring: 5/5 connections open" in shown
    strict_json(out)  # stdout is the JSON alone


def test_sweep_samples_the_server() -> None:
    (row,) = measure(variant("threaded"), [8], delay_ms=10, duration=1.0, warmup=0.2)
    assert row.requests > 0
    assert row.server_threads >= 8  # a thread per connection, sampled while they were open
    assert row.server_rss_mb > 0
