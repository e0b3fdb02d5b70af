"""Run servers natively and measure them at several concurrency levels.

Shared by ``make bench`` and ``make demo``: each server runs as its own
process on loopback (:mod:`echolab.launcher`), each measurement is one
``echolab bench --json`` subprocess, and the server's CPU, RSS and threads
are sampled with psutil while the client runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from ..launcher import LaunchError, Process
from ..load.bench import CONNECT_PHASE_SECONDS
from ..settings import STOP_TIMEOUT
from .contenders import Contender, running
from .results import Row

# Open loop: connections for twice the in-flight requests the rate needs at the
# simulated IO, so a server that slows down is not starved by the client.
OPEN_LOOP_HEADROOM = 2.0
OPEN_LOOP_MIN_CONNECTIONS = 10
# A closed-loop level runs until the bound gives at least this many replies: a share of
# the bound counted in whole replies is then good to a few percent.
MIN_REQUESTS = 30


@dataclass
class Usage:
    """What the server process used while one measurement ran."""

    cpu_percent: float = 0.0
    rss_mb: float = 0.0
    threads: int = 0
    samples: list[tuple[float, float, int]] = field(default_factory=list)


class Probe(Protocol):
    """Counts what a server's dependency sees at once while a level runs (lab/dependencies.py)."""

    def start(self) -> None: ...

    def finish(self) -> int | None:
        """The most calls in progress at once since :meth:`start`; None if it could not tell."""
        ...


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The server and its children: gunicorn serves from worker processes."""
    with contextlib.suppress(psutil.Error):
        return [process, *process.children(recursive=True)]
    return [process]


class Sampler(threading.Thread):
    """Samples a server's CPU time, RSS and threads (summed over its processes).

    CPU time counts children that have exited too (``children_*``), so a
    gunicorn worker restarted mid-run still counts. Its rate is taken over
    the client's measured window when :meth:`finish` is given it: the client's
    start-up, connecting and warm-up, and its teardown, are not the load it
    reports.
    """

    def __init__(self, process: psutil.Process, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.every = every
        self.stop = threading.Event()
        self.usage = Usage()
        self.cpu_samples = [(time.monotonic(), self._cpu())]

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
            now = time.monotonic()
            self.cpu_samples.append((now, self._cpu()))
            self.usage.samples.append((now - self.cpu_samples[0][0], rss, threads))

    def finish(self, window: tuple[float, float] | None = None) -> Usage:
        """Stop; the CPU rate over ``window`` (time.monotonic), or over the whole run without one."""
        self.stop.set()
        self.join()
        self.cpu_samples.append((time.monotonic(), self._cpu()))
        inside = self.cpu_samples
        if window is not None:
            # The samples within the window (at least two): its CPU rate, not its edges'.
            within = [s for s in inside if window[0] <= s[0] <= window[1]]
            if len(within) >= 2:
                inside = within
        (t0, cpu0), (t1, cpu1) = inside[0], inside[-1]
        usage = self.usage
        if t1 > t0:
            usage.cpu_percent = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
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
    """One ``echolab bench --json`` run against 127.0.0.1:port.

    A run the client judged meaningless (nothing succeeded, a framing
    mismatch) still measured the server: its result comes back with its
    ``problem``. RuntimeError when there is no result at all.
    """
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
    why = client_failed(done.returncode, done.stdout, done.stderr)
    if why is not None:
        raise RuntimeError(f"bench exited with {done.returncode}: {why}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def client_failed(returncode: int, stdout: str, stderr: str) -> str | None:
    """Why a bench client gave no result (the last line it wrote to stderr), or None if it gave one:
    it reports its JSON with 0, and with 1 when requests failed."""
    if returncode in (0, 1) and stdout.strip():
        return None
    said = stderr.strip().splitlines()
    return said[-1] if said else "no output"


def measured_window(result: dict[str, Any]) -> tuple[float, float] | None:
    """The client's measured window, time.monotonic(); None if it measured nothing."""
    window = (result.get("measured_from", 0.0), result.get("measured_until", 0.0))
    return window if window[1] > window[0] else None


def open_loop_connections(rate: float, delay_ms: float) -> int:
    """Enough connections to carry ``rate`` at one request outstanding each, with room for slower replies."""
    return max(OPEN_LOOP_MIN_CONNECTIONS, math.ceil(rate * delay_ms / 1000 * OPEN_LOOP_HEADROOM))


def long_enough(duration: float, connections: int, delay_ms: float) -> float:
    """``duration``, or longer where the bound gives fewer than :data:`MIN_REQUESTS` in it.

    At 1 connection, 1 s and 100 ms, ten replies: one more or less moves
    the share of the bound by a tenth, a quantisation, not a finding.
    """
    if delay_ms <= 0:
        return duration
    return max(duration, MIN_REQUESTS * delay_ms / 1000 / max(connections, 1))


def measure(
    contender: Contender,
    levels: Sequence[int],
    delay_ms: float,
    duration: float,
    warmup: float,
    extra: Sequence[str] = (),
    on_level: Callable[[Row], None] | None = None,
    on_error: Callable[[int | None, str], None] | None = None,
    server_options: Sequence[str] = (),
    *,
    open_loop: bool = False,
    scenario: str = "",
    stop_below: float = 0.0,
    stop_timeout: float = STOP_TIMEOUT,
    probe: Probe | None = None,
) -> list[Row]:
    """Start ``contender`` once and run the client at each level; one row per level.

    A level is a number of connections (closed loop), or with ``open_loop``
    an offered rate in requests/s, carried by :func:`open_loop_connections`.
    ``server_options`` go to the server after everything else (a scenario's
    flags: ``Scenario.options_for``); ``delay_ms`` is then the time one
    request takes on an idle server, for the Little's-law bound. A closed
    loop runs each level :func:`long_enough` to count.

    With ``on_error``, what goes wrong is told there in one line, with the
    level it happened at, and this server's sweep ends there (higher levels
    would only fail worse): a server that cannot start, or exits mid-level,
    or a client that fails, comes back as that level's failed row
    (:meth:`Row.failed`); a server that does not stop within
    ``stop_timeout`` of SIGTERM is killed with all it started, told with
    the level None. Without ``on_error``, the error propagates. A level
    where the server gives less than ``stop_below`` of the bound ends its
    sweep too. ``probe``, if given, counts the calls at the server's
    dependency during each level.
    """
    rows: list[Row] = []
    mode = "open" if open_loop else "closed"
    runtime = contender.runtime()  # its Python, GIL and loop: the same at every level

    def connections(level: int) -> int:
        return open_loop_connections(level, delay_ms) if open_loop else level

    def failed(level: int, failure: str) -> None:
        if on_error is None:
            raise RuntimeError(failure)
        rate = level if open_loop else 0.0
        row = Row.failed(
            failure, server=contender.name, **runtime, framing=contender.framing,
            connections=connections(level),
            delay_ms=delay_ms, scenario=scenario, mode=mode, rate=rate,
        )  # fmt: skip
        rows.append(row)
        if on_level is not None:
            on_level(row)
        on_error(level, failure)

    def stop_failed(failure: str) -> None:
        assert on_error is not None
        on_error(None, failure)

    on_stop_error = stop_failed if on_error else None
    try:
        with running(
            contender, delay_ms, server_options, stop_timeout=stop_timeout, on_stop_error=on_stop_error
        ) as (port, process):
            for level in levels:
                if not process.running():  # between levels
                    failed(level, exited(process))
                    break
                options = (*extra, "--rate", str(level)) if open_loop else extra
                seconds = duration if open_loop else long_enough(duration, level, delay_ms)
                sampler = Sampler(psutil.Process(process.pid))
                sampler.start()
                if probe is not None:
                    probe.start()
                result: dict[str, Any] = {}
                try:
                    result = bench_once(
                        port, contender.framing, connections(level), seconds, warmup, delay_ms, options
                    )
                except RuntimeError as exc:
                    client_failed = str(exc)
                else:
                    client_failed = ""
                finally:
                    usage = sampler.finish(measured_window(result))
                    peak = probe.finish() if probe is not None else None
                if not process.running():  # what the client saw was a server going away
                    failed(level, exited(process, "mid-level"))
                    break
                if client_failed:
                    failed(level, f"the client failed: {client_failed}")
                    break
                rows.append(
                    Row.from_dict(
                        {
                            **result,
                            "server": contender.name,
                            **runtime,
                            "scenario": scenario,
                            "delay_ms": delay_ms,
                            "server_cpu_percent": usage.cpu_percent,
                            "server_rss_mb": usage.rss_mb,
                            "server_threads": usage.threads,
                            "dependency_peak": peak,
                        }
                    )
                )
                if on_level is not None:
                    on_level(rows[-1])
                if (rows[-1].bound_fraction or 0.0) < stop_below:
                    break
    except LaunchError as exc:  # it did not start (a stop that failed went to on_error)
        if on_error is None:
            raise
        failed(levels[0], exc.summary)
    return rows


def exited(process: Process, when: str = "between levels") -> str:
    """A server that went away, in one line: its exit status and what it logged last."""
    assert process.proc is not None
    return f"{process.name} exited with {process.proc.returncode} {when}; {process.last_word()}"
