"""Prometheus metrics shared by every echo server.

Every metric carries a ``server`` label (``threaded``, ``async``) so one
dashboard can put the servers side by side; the model, loop and framing are
in ``echo_server_info``. Gauges that describe state (active connections,
in-flight requests, threads) are computed when Prometheus scrapes, from the
server's own bookkeeping, so they cost nothing per request. Labelled children
are bound once here: ``.labels()`` costs more than the update itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import REGISTRY

# Dense around the default 100 ms delay, where a healthy server answers, then
# out to 10 s, where an overloaded one does; the low end is for delay 0.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.102, 0.105, 0.11, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

OUTCOMES = ("ok", "too_large", "aborted")
REFUSAL_REASONS = ("max_connections", "shutdown")
CONNECTION_ERRORS = ("reset", "broken_pipe", "other")


class ServerMetrics:
    """The instruments one server updates, bound to its ``server`` label."""

    def __init__(self, server: str, info: Mapping[str, str],
                 registry: CollectorRegistry = REGISTRY) -> None:
        label = ("server",)
        Info("echo_server", "Server implementation and settings", label,
             registry=registry).labels(server).info(dict(info))
        requests = Counter("echo_requests", "Requests by outcome: ok (answered), too_large "
                           "(over the size limit, answered with an error), aborted (client gone "
                           "before the reply)", label + ("outcome",), registry=registry)
        self._requests = {o: requests.labels(server, o) for o in OUTCOMES}
        self._ok = self._requests["ok"]
        self._duration = Histogram(
            "echo_request_duration_seconds", "From a request's last byte read to its reply "
            "written", label, buckets=DURATION_BUCKETS, registry=registry).labels(server)
        self._non_utf8 = Counter("echo_non_utf8_requests", "Requests that were not valid UTF-8 "
                                 "(upper-cased as bytes)", label, registry=registry).labels(server)
        self._received = Counter("echo_received_bytes", "Request bytes received", label,
                                 registry=registry).labels(server)
        self._sent = Counter("echo_sent_bytes", "Reply bytes sent", label,
                             registry=registry).labels(server)
        self._opened = Counter("echo_connections_opened", "Connections accepted", label,
                               registry=registry).labels(server)
        refused = Counter("echo_connections_refused", "Connections turned away with an error line",
                          label + ("reason",), registry=registry)
        self._refused = {r: refused.labels(server, r) for r in REFUSAL_REASONS}
        self._timed_out = Counter("echo_connections_timed_out", "Connections closed for idling "
                                  "past the idle timeout", label, registry=registry).labels(server)
        errors = Counter("echo_connection_errors", "Connections lost to an error",
                         label + ("kind",), registry=registry)
        self._errors = {k: errors.labels(server, k) for k in CONNECTION_ERRORS}
        self._accept_errors = Counter("echo_accept_errors", "Failed accept() calls, e.g. out of "
                                      "file descriptors", label + ("errno",), registry=registry)
        self._server = server
        self._active = Gauge("echo_connections_active", "Open client connections", label,
                             registry=registry).labels(server)
        self._in_flight = Gauge("echo_requests_in_flight", "Requests read but not yet answered",
                                label, registry=registry).labels(server)
        self._threads = Gauge("echo_threads", "Threads alive in the server process", label,
                              registry=registry).labels(server)
        self._threads.set_function(lambda: float(threading.active_count()))
        self._lag = Histogram("echo_event_loop_lag_seconds", "How late the event loop ran a "
                              "timer (async server only)", label, buckets=LAG_BUCKETS,
                              registry=registry).labels(server)

    def track(self, active: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self._active.set_function(lambda: float(active()))
        self._in_flight.set_function(lambda: float(in_flight()))

    def answered(self, count: int, duration: float, received: int, sent: int) -> None:
        ok, observe = self._ok, self._duration.observe
        ok.inc(count)
        for _ in range(count):
            observe(duration)
        self._received.inc(received)
        self._sent.inc(sent)

    def not_answered(self, outcome: str, count: int = 1) -> None:
        self._requests[outcome].inc(count)

    def non_utf8(self) -> None:
        self._non_utf8.inc()

    def connection_opened(self) -> None:
        self._opened.inc()

    def connection_refused(self, reason: str) -> None:
        self._refused[reason].inc()

    def connection_timed_out(self) -> None:
        self._timed_out.inc()

    def connection_error(self, kind: str) -> None:
        self._errors[kind].inc()

    def accept_error(self, errno_name: str) -> None:
        self._accept_errors.labels(self._server, errno_name).inc()

    def loop_lag(self, seconds: float) -> None:
        self._lag.observe(seconds)


class NoMetrics(ServerMetrics):
    """Same interface, no instrumentation: the baseline for measuring its cost."""

    def __init__(self, server: str = "", info: Mapping[str, str] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        pass

    def track(self, active: Callable[[], int], in_flight: Callable[[], int]) -> None:
        pass

    def answered(self, count: int, duration: float, received: int, sent: int) -> None:
        pass

    def not_answered(self, outcome: str, count: int = 1) -> None:
        pass

    def non_utf8(self) -> None:
        pass

    def connection_opened(self) -> None:
        pass

    def connection_refused(self, reason: str) -> None:
        pass

    def connection_timed_out(self) -> None:
        pass

    def connection_error(self, kind: str) -> None:
        pass

    def accept_error(self, errno_name: str) -> None:
        pass

    def loop_lag(self, seconds: float) -> None:
        pass


def start(server: str, info: Mapping[str, str], enabled: bool, host: str,
          port: int) -> ServerMetrics:
    """Create the server's metrics and serve /metrics, or return the no-op set."""
    if not enabled:
        return NoMetrics()
    # The *_created series double what Prometheus stores and no panel uses them.
    disable_created_metrics()
    metrics = ServerMetrics(server, info)
    start_http_server(port, addr=host)
    return metrics
