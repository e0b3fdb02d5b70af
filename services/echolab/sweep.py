"""Run servers natively and measure them at several concurrency levels.

Shared by ``make bench`` and ``make demo``: each server runs as its own
process on loopback, each measurement is one ``echolab bench --json``
subprocess, and the server's CPU, RSS and threads are sampled with psutil
while the client runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from .bench import CONNECT_PHASE_SECONDS

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: ``name`` is what tables and charts call it."""

    name: str
    kind: str  # an `echolab serve` server, or "bare-uvloop" / "bare-threaded"
    framing: str = "lines"
    options: tuple[str, ...] = ()

    def argv(self, port: int, delay_ms: float) -> list[str]:
        if self.kind.startswith("bare-"):  # bare-uvloop, bare-threaded
            return [sys.executable, "-m", "echolab.bare_server", self.kind[5:], str(port), f"{delay_ms:g}"]
        framing = () if self.framing == "http" else ("--framing", self.framing)
        return [
            sys.executable,
            "-m",
            "echolab",
            "serve",
            self.kind,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(free_port()),
            *framing,
            "--delay-ms",
            f"{delay_ms:g}",
            "--log-level",
            "warning",
            *self.options,
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server not listening on {port} after {timeout}s")


@contextlib.contextmanager
def running(spec: ServerSpec, delay_ms: float) -> Iterator[tuple[int, psutil.Process]]:
    """Start the server, yield (port, process), stop it with SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(spec.argv(port, delay_ms), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield port, psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Usage:
    """What the server process used while one measurement ran."""

    cpu_percent: float = 0.0
    rss_mb: float = 0.0
    threads: int = 0
    samples: list[tuple[float, float, int]] = field(default_factory=list)


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The server and its children: gunicorn serves from worker processes."""
    with contextlib.suppress(psutil.Error):
        return [process, *process.children(recursive=True)]
    return [process]


class Sampler(threading.Thread):
    """Samples a server's RSS and threads (summed over its processes) and its CPU time.

    CPU time counts children that have exited too (``children_*``), so a
    gunicorn worker restarted mid-run still counts.
    """

    def __init__(self, process: psutil.Process, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.every = every
        self.stop = threading.Event()
        self.usage = Usage()
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()

    def _cpu(self) -> float:
        total = 0.0
        for proc in tree(self.process):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def run(self) -> None:
        while not self.stop.wait(self.every):
            rss, threads = 0.0, 0
            for proc in tree(self.process):
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss / 2**20
                    threads += proc.num_threads()
            self.usage.samples.append((time.monotonic() - self._t0, rss, threads))

    def finish(self) -> Usage:
        self.stop.set()
        self.join()
        elapsed = time.monotonic() - self._t0
        usage = self.usage
        with contextlib.suppress(psutil.Error):
            usage.cpu_percent = round(100 * (self._cpu() - self._cpu0) / elapsed, 1)
        if usage.samples:
            usage.rss_mb = round(max(s[1] for s in usage.samples), 1)
            usage.threads = max(s[2] for s in usage.samples)
        return usage


def bench_once(
    port: int,
    framing: str,
    connections: int,
    duration: float,
    warmup: float,
    delay_ms: float,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """One ``echolab bench --json`` run against 127.0.0.1:port."""
    options = (
        f"--framing {framing} --connections {connections} --duration {duration} "
        f"--warmup {warmup} --delay-hint-ms {delay_ms:g}"
    )
    argv = [sys.executable, "-m", "echolab", "bench", f"127.0.0.1:{port}", "--json", *options.split(), *extra]
    limit = duration + warmup + CONNECT_PHASE_SECONDS + 60
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), timeout=limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"bench did not finish in {limit:g}s") from None
    if done.returncode != 0:
        raise RuntimeError(f"bench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(
    spec: ServerSpec,
    levels: Sequence[int],
    delay_ms: float,
    duration: float,
    warmup: float,
    extra: Sequence[str] = (),
    on_level: Callable[[dict[str, Any]], None] | None = None,
    on_error: Callable[[int, RuntimeError], None] | None = None,
) -> list[dict[str, Any]]:
    """Start ``spec`` once and run the client at each level; one row per level.

    With ``on_error``, a level whose client fails is reported there and ends
    this server's sweep (higher levels would only fail worse); the rows so
    far are kept. Without, the error propagates.
    """
    rows = []
    with running(spec, delay_ms) as (port, process):
        for connections in levels:
            sampler = Sampler(process)
            sampler.start()
            try:
                result = bench_once(port, spec.framing, connections, duration, warmup, delay_ms, extra)
            except RuntimeError as exc:
                if on_error is None:
                    raise
                on_error(connections, exc)
                break
            finally:
                usage = sampler.finish()
            rows.append(
                {
                    "server": spec.name,
                    "delay_ms": delay_ms,
                    **result,
                    "server_cpu_percent": usage.cpu_percent,
                    "server_rss_mb": usage.rss_mb,
                    "server_threads": usage.threads,
                }
            )
            if on_level is not None:
                on_level(rows[-1])
    return rows
