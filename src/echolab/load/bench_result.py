"""What ``echolab bench`` reports: the result, its latency histogram, and what went wrong, in words.

A result never holds NaN: a figure that could not be measured (a percentile
of no requests) is None, JSON ``null``, and shows as :data:`UNMEASURED`.
What makes a run's figures meaningless (nothing connected, a framing
mismatch) is its ``problem``, one line: such a run has no share of the
bound. What the reader should know to read them (connections that did not
open, an offered rate the connections cannot carry) are its ``notes``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Latency histogram: log-spaced buckets, this many per decade (each about 2.3% wide),
# fine enough for a CDF near the 100 ms delay, a few kB of JSON per level (empty buckets left out).
BUCKETS_PER_DECADE = 100
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
FD_ADVICE = "raise the limit with ulimit -n"
UNMEASURED = "\N{EN DASH}"  # what every table and line of the lab shows for a figure that was not measured


def shown(value: float | None, spec: str = ",.1f") -> str:
    """A figure as text, or :data:`UNMEASURED`."""
    return UNMEASURED if value is None else format(value, spec)


@dataclass
class BenchResult:
    target: str
    framing: str
    mode: str  # closed | open
    connections: int
    connected: int  # connections open when the measurement began
    rate: float  # open loop: offered requests/s; closed: 0
    delay_hint_ms: float
    seconds: float
    requests: int
    throughput: float  # completed requests/s: the achieved rate
    latency_ms: dict[str, float | None]
    histogram_ms: list[tuple[float, int]] = field(default_factory=list)  # (bucket's upper edge, count)
    errors: dict[str, int] = field(default_factory=dict)
    connect_errors: dict[str, int] = field(default_factory=dict)  # failed connects, any phase
    bound: float | None = None  # closed: connections / delay (Little's law); open: the offered rate
    bound_fraction: float | None = None
    unsent: int = 0  # open loop: requests due but still waiting for a free connection at the end
    client_cpu_percent: float = 0.0  # this client's CPU while measuring, % of one core
    # The measured window on the system's monotonic clock (time.monotonic, the same in every
    # process here), so whoever samples the server can take its CPU over the same seconds.
    measured_from: float = 0.0
    measured_until: float = 0.0
    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    partial: bool = False  # interrupted: the figures cover the time measured until then
    interrupted: str | None = None  # by which signal: SIGINT, SIGTERM
    machine: dict[str, Any] = field(default_factory=dict)


def bucket_edge(index: int) -> float:
    return round(10 ** (index / BUCKETS_PER_DECADE), 6)


def histogram(latencies_ms: list[float]) -> list[tuple[float, int]]:
    """(upper edge ms, count) of each non-empty log-spaced bucket, in order."""
    counts: Counter[int] = Counter()
    for ms in latencies_ms:
        counts[math.ceil(math.log10(max(ms, 1e-3)) * BUCKETS_PER_DECADE)] += 1
    return [(bucket_edge(i), counts[i]) for i in sorted(counts)]


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    """p50 ... p99.9 and max in ms of sorted ``latencies`` (seconds); None for no requests."""
    count = len(latencies)
    figures: dict[str, float | None] = {}
    for name, p in PERCENTILES:
        figures[name] = round(latencies[min(count - 1, int(p / 100 * count))] * 1000, 3) if count else None
    figures["max"] = round(latencies[-1] * 1000, 3) if count else None
    return figures


@dataclass
class Evidence:
    """What the connections saw beyond latencies, for telling the user what went wrong."""

    framing: str
    server_closes: int = 0  # connections the server closed (EOF) while the run went on
    closed_after_one: int = 0  # ...of which right after their first reply
    bytes_received: int = 0
    first_wrong: bytes = b""  # the first reply that was not the expected one


def explain_connections(result: BenchResult, still_connecting: int) -> str | None:
    """Why some connections were not open when measuring began, in one line."""
    missing = result.connections - result.connected
    if missing <= 0:
        return None
    reasons = []
    fd = result.connect_errors.get("client_fd_limit", 0)
    if fd:
        reasons.append(f"this client ran out of file descriptors ({fd:,} times): {FD_ADVICE}")
    others = {k: v for k, v in result.connect_errors.items() if k != "client_fd_limit"}
    if others:
        reasons.append("connects failed: " + ", ".join(f"{k}={v:,}" for k, v in sorted(others.items())))
    if still_connecting:
        reasons.append(f"{still_connecting:,} still connecting (the server accepts slowly)")
    why = "; ".join(reasons) or "the server accepted them too slowly"
    return f"{missing:,} of {result.connections:,} connections were not open when measuring began: {why}"


def diagnose(result: BenchResult, evidence: Evidence) -> str | None:
    """Why the figures are meaningless, or None; framing mismatches first: they look like a broken server."""
    if (
        evidence.framing == "lines"
        and evidence.closed_after_one
        and (evidence.closed_after_one * 2 >= evidence.server_closes)
    ):
        return (
            "the server closed the connection after each reply: it speaks oneshot framing "
            "(bench it with --framing oneshot, or serve it with --framing lines)"
        )
    if evidence.first_wrong.startswith(b"HTTP/"):
        return "the server answers in HTTP: bench it with --framing http"
    if evidence.framing == "http" and result.errors.get("bad_response"):
        return "the server does not answer in HTTP: bench it with --framing lines or oneshot"
    if result.requests:
        return None
    if evidence.framing == "oneshot" and result.errors.get("timeout") and not evidence.bytes_received:
        return (
            "no reply within --timeout: a server in lines framing waits for a newline that oneshot "
            "does not send (bench it with --framing lines)"
        )
    if not result.connected:
        why = ", ".join(f"{k}={v:,}" for k, v in sorted(result.connect_errors.items())) or "none connected"
        advice = f" ({FD_ADVICE})" if "client_fd_limit" in result.connect_errors else ""
        return f"no connection opened: {why}{advice}"
    errors = ", ".join(f"{k}={v:,}" for k, v in sorted(result.errors.items())) or "no reply in time"
    return f"no request succeeded: {errors}"


def render(result: BenchResult) -> str:
    """The result for a terminal."""

    def ms(key: str) -> str:
        return shown(result.latency_ms.get(key))

    loop = f"{result.mode} loop"
    lines = [
        f"target      {result.target} ({result.framing}, {loop}, "
        f"{result.connected:,}/{result.connections:,} connections)",
        f"requests    {result.requests:,} in {result.seconds:.2f}s = {result.throughput:,.0f} req/s",
    ]
    if result.mode == "open":
        fraction = f" ({shown(result.bound_fraction, '.1%')})"
        unsent = f", {result.unsent:,} still queued in the client at the end" if result.unsent else ""
        lines.append(
            f"rate        offered {result.rate:,.0f} req/s, achieved {result.throughput:,.0f} req/s"
            f"{fraction}{unsent}"
        )
    lines += [
        f"latency ms  p50 {ms('p50')}  p90 {ms('p90')}  p99 {ms('p99')}  p99.9 {ms('p99.9')}  max {ms('max')}"
        + ("  (from each request's intended send time)" if result.mode == "open" else ""),
        "errors      " + (", ".join(f"{k}={v:,}" for k, v in sorted(result.errors.items())) or "none"),
    ]
    if result.mode == "closed" and result.bound:
        lines.append(
            f"little's law bound {result.bound:,.0f} req/s "
            f"({result.connections:,} connections / {result.delay_hint_ms:g} ms): "
            f"achieved {shown(result.bound_fraction, '.1%')}"
        )
    lines += [f"note        {note}" for note in result.notes]
    if result.partial:
        lines.append("partial     interrupted: the figures cover the time measured until then")
    return "\n".join(lines)
