"""Prometheus metrics shared by every echo server.

Every metric carries a ``server`` label (``threaded``, ``async``) so one
dashboard can put the servers side by side; the model, loop and framing are
in ``echo_server_info``.

Updates are plain attribute arithmetic, read by a custom collector when
Prometheus scrapes (client_python's documented pattern for proxying other
state). prometheus_client's own Counter and Histogram take a lock and walk
the bucket list on every update: 5 µs a request for our set, a third of
what the async server spends on a request at delay 0. Gauges that describe
state (active connections, in-flight requests, threads) are computed at
scrape time and cost nothing per request.
"""

from __future__ import annotations

import functools
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import disable_created_metrics, start_http_server
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

# Dense around the default 100 ms delay, where a healthy server answers, then
# out to 10 s, where an overloaded one does; the low end is for delay 0.
# fmt: off
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.102, 0.105, 0.11, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)
# fmt: on
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Every metric's help text, in one place: the TCP servers' collector and the
# HTTP servers' multiprocess instruments both take their names and help from here.
DOCS = {
    "echo_server": "Server implementation and settings",
    "echo_requests": "Requests by outcome: ok (answered), too_large (over the size limit, answered "
    "with an error), aborted (client gone before the reply)",
    "echo_request_duration_seconds": "From a request's last byte read to its reply written",
    "echo_non_utf8_requests": "Requests that were not valid UTF-8 (upper-cased as bytes)",
    "echo_received_bytes": "Request bytes received",
    "echo_sent_bytes": "Reply bytes sent",
    "echo_connections_opened": "Connections accepted",
    "echo_connections_refused": "Connections turned away with an error line",
    "echo_connections_timed_out": "Connections closed for idling past the idle timeout",
    "echo_connection_errors": "Connections lost to an error",
    "echo_accept_errors": "Failed accept() calls, e.g. out of file descriptors",
    "echo_connections_active": "Open client connections",
    "echo_requests_in_flight": "Requests read but not yet answered",
    "echo_threads": "Threads alive in the server process",
    "echo_event_loop_lag_seconds": "How late the event loop ran a timer (async servers only)",
}
# The second label of the metrics that have one, besides "server".
LABELS = {
    "echo_requests": "outcome",
    "echo_connections_refused": "reason",
    "echo_connection_errors": "kind",
    "echo_accept_errors": "errno",
}

REFUSAL_REASONS = ("max_connections", "shutdown")
CONNECTION_ERRORS = ("reset", "broken_pipe", "other")


class Buckets:
    """A histogram's state: per-bucket counts (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's
        # bucket, as Prometheus's "le" (less than or equal) says.
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def family(self, name: str, server: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, DOCS[name], labels=["server"])
        cumulative, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), list(self.counts), strict=True):
            total += count
            cumulative.append((bound, total))
        family.add_metric([server], cumulative, self.sum)
        return family


class ServerMetrics(Collector):
    """What one server counts; exported under its ``server`` label."""

    def __init__(self, server: str, info: Mapping[str, str]) -> None:
        self.server = server
        self.info = dict(info)
        self.ok = self.too_large = self.aborted = 0
        self.duration = Buckets(DURATION_BUCKETS)
        self.non_utf8_requests = 0
        self.received_bytes = self.sent_bytes = 0
        self.opened = self.timed_out = 0
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.errors = dict.fromkeys(CONNECTION_ERRORS, 0)
        self.accept_errors: dict[str, int] = {}
        self.lag = Buckets(LAG_BUCKETS)
        self._active: Callable[[], int] = lambda: 0
        self._in_flight: Callable[[], int] = lambda: 0

    # --- updates (the hot ones first) --------------------------------------

    def answered(self, count: int, duration: float, received: int, sent: int) -> None:
        self.ok += count
        self.duration.observe(duration, count)
        self.received_bytes += received
        self.sent_bytes += sent

    def not_answered(self, outcome: str, count: int = 1) -> None:
        if outcome == "too_large":
            self.too_large += count
        else:
            self.aborted += count

    def non_utf8(self, count: int = 1) -> None:
        self.non_utf8_requests += count

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_refused(self, reason: str) -> None:
        self.refused[reason] += 1

    def connection_timed_out(self) -> None:
        self.timed_out += 1

    def connection_error(self, kind: str) -> None:
        self.errors[kind] += 1

    def accept_error(self, errno_name: str) -> None:
        self.accept_errors[errno_name] = self.accept_errors.get(errno_name, 0) + 1

    def loop_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def track(self, active: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self._active, self._in_flight = active, in_flight

    # --- export ------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        server = self.server
        info = InfoMetricFamily("echo_server", DOCS["echo_server"], labels=["server"])
        info.add_metric([server], self.info)
        yield info

        def counter(name: str, values: Mapping[str, int] | int) -> CounterMetricFamily:
            label = LABELS.get(name)
            family = CounterMetricFamily(name, DOCS[name], labels=["server", label] if label else ["server"])
            if isinstance(values, int):
                family.add_metric([server], values)
            else:
                for key, value in values.items():
                    family.add_metric([server, key], value)
            return family

        def gauge(name: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, DOCS[name], labels=["server"])
            family.add_metric([server], value)
            return family

        yield counter("echo_requests", {"ok": self.ok, "too_large": self.too_large, "aborted": self.aborted})
        yield self.duration.family("echo_request_duration_seconds", server)
        yield counter("echo_non_utf8_requests", self.non_utf8_requests)
        yield counter("echo_received_bytes", self.received_bytes)
        yield counter("echo_sent_bytes", self.sent_bytes)
        yield counter("echo_connections_opened", self.opened)
        yield counter("echo_connections_refused", self.refused)
        yield counter("echo_connections_timed_out", self.timed_out)
        yield counter("echo_connection_errors", self.errors)
        yield counter("echo_accept_errors", dict(self.accept_errors))
        yield gauge("echo_connections_active", self._active())
        yield gauge("echo_requests_in_flight", self._in_flight())
        yield gauge("echo_threads", threading.active_count())
        yield self.lag.family("echo_event_loop_lag_seconds", server)


UPDATES = (
    "answered",
    "not_answered",
    "non_utf8",
    "connection_opened",
    "connection_refused",
    "connection_timed_out",
    "connection_error",
    "accept_error",
    "loop_lag",
)


def _serialised(method: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(method)
    def locked(self: ThreadSafeMetrics, *args: Any) -> None:
        with self.lock:
            method(self, *args)

    return locked


class ThreadSafeMetrics(ServerMetrics):
    """For the threaded server: every update holds one lock (``+=`` is not atomic)."""

    def __init__(self, server: str, info: Mapping[str, str]) -> None:
        super().__init__(server, info)
        self.lock = threading.Lock()


class NoMetrics(ServerMetrics):
    """Same interface, no instrumentation: the baseline for measuring its cost."""

    def __init__(self) -> None:
        super().__init__("", {})


for _name in UPDATES:
    setattr(ThreadSafeMetrics, _name, _serialised(getattr(ServerMetrics, _name)))
    setattr(NoMetrics, _name, lambda self, *args: None)


def start(
    server: str,
    info: Mapping[str, str],
    enabled: bool,
    host: str,
    port: int,
    thread_safe: bool = False,
    registry: CollectorRegistry = REGISTRY,
) -> ServerMetrics:
    """Create the server's metrics and serve /metrics, or return the no-op set."""
    if not enabled:
        return NoMetrics()
    # The *_created series double what Prometheus stores and no panel uses them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = (ThreadSafeMetrics if thread_safe else ServerMetrics)(server, info)
    registry.register(metrics)
    start_http_server(port, addr=host, registry=registry)
    return metrics
