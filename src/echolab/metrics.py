"""Prometheus metrics: the catalogue of every metric echolab exports, and the TCP servers' collector.

:data:`METRICS` names every metric once: type, help, labels, buckets, and
which servers export it. The TCP servers' collector, the HTTP servers'
multiprocess instruments, the Locust processes' collectors, the downstream
service, the manual's metrics table, the dashboards and their tests all read
it: an exporter makes each metric from its :class:`MetricSpec`
(:meth:`MetricSpec.family`, :meth:`MetricSpec.instrument`), and a server
records through a :class:`Recorder`. Every metric of the servers and of the
load generators carries ``server``, the catalogue's name of the server it is
about, so server and client series join without relabelling; the downstream
service's (``echolab downstream``) are about the calls of every server.

The TCP servers count with plain attribute arithmetic, read by a custom
collector when Prometheus scrapes (client_python's documented pattern for
proxying other state). prometheus_client's own Counter and Histogram take a
lock and walk the bucket list on every update: 5 µs a request for our set, a
third of what the async server spends on a request at delay 0. Gauges that
describe state (active connections, in-flight requests, threads) are
computed at scrape time and cost nothing per request.
"""

from __future__ import annotations

import errno
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import cgroup, interpreters
from .catalogue import SERVERS, Server
from .runtime import RESOURCE_ERRNOS, binding
from .settings import AsyncSettings, OffloadSettings

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
# A pooled connection at once (tens of microseconds), a new one made (a millisecond or more),
# or a wait for one to come free, up to the 30 s of the default --pool-timeout.
POOL_WAIT_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REFUSAL_REASONS = ("max_connections", "shutdown")
CONNECTION_ERRORS = ("reset", "broken_pipe", "other")
# Why the server closed a connection on a deadline (docs/server-behavior.md, "Deadlines").
TIMEOUT_REASONS = ("idle", "request_deadline", "not_reading")
OUTCOMES = ("ok", "too_large", "aborted", "dependency_error")
# Why a request's dependency failed (servers/dependency.py says what each means).
DEPENDENCY_ERRORS = ("connect", "timeout", "pool_timeout", "query")
WORK_KINDS = ("cpu", "blocking", "io")
FAILURE_KINDS = (
    "wrong_reply",
    "server_error",
    "closed",
    "refused",
    "unreachable",
    "reset",
    "timeout",
    "not_sent",
    "other",
)


def every_server(server: Server) -> bool:
    return True


def no_server(server: Server) -> bool:
    """The metrics of another process than the echo servers (the downstream service)."""
    return False


def tcp_servers(server: Server) -> bool:
    """The servers that own their connections (gunicorn owns the HTTP servers')."""
    return server.transport.owns_connections


def event_loop_servers(server: Server) -> bool:
    """The servers with an event loop of their own to probe (uvicorn runs the HTTP one's)."""
    return issubclass(server.settings, AsyncSettings)


def gunicorn_servers(server: Server) -> bool:
    return server.transport.worker_processes


def offload_servers(server: Server) -> bool:
    """The servers that can hand their blocking work to a thread pool (--offload)."""
    return issubclass(server.settings, OffloadSettings)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``name`` as prometheus_client takes it (counters without ``_total``)."""

    name: str
    kind: Literal["counter", "gauge", "histogram", "info"]
    help: str
    labels: tuple[str, ...] = ("server",)
    buckets: tuple[float, ...] = ()
    exported_by: Callable[[Server], bool] = every_server
    side: Literal["server", "client", "downstream"] = "server"
    only_when: str = ""  # a condition without which the metric is absent

    @property
    def exposed(self) -> str:
        """The name as it appears on /metrics and in PromQL."""
        return self.name + {"counter": "_total", "info": "_info"}.get(self.kind, "")

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(s.name for s in SERVERS if self.exported_by(s))

    def instrument(self) -> Any:
        """The metric as a prometheus_client instrument for a worker process, registered nowhere.

        In multiprocess mode the worker's instruments write files, which the
        master sums when scraped; a gauge counts the workers alive now.
        """
        options: dict[str, Any] = {"registry": None}
        if self.buckets:
            options["buckets"] = self.buckets
        if self.kind == "gauge":
            options["multiprocess_mode"] = "livesum"  # a dead worker's files are dropped (child_exit)
        return INSTRUMENTS[self.kind](self.name, self.help, self.labels, **options)

    def family(self, samples: Mapping[str, Sample]) -> Metric:
        """The metric, for Prometheus to read, with a sample per value of its first label.

        ``samples`` maps that value (the server's name, for most; "" for a
        metric without labels) to its value: a number; a number per value of the second label
        (``{"ok": 3, "aborted": 1}``); a histogram's :class:`Buckets`; an info
        metric's labels.
        """
        family: Any = FAMILIES[self.kind](self.name, self.help, labels=self.labels)
        for first, value in samples.items():
            head = [first][: len(self.labels)]
            if isinstance(value, Buckets):
                family.add_metric(head, value.cumulative(), value.sum)
            elif self.kind != "info" and isinstance(value, Mapping):
                for second, number in value.items():
                    family.add_metric([*head, second], number)
            else:
                family.add_metric(head, value)
        return cast(Metric, family)


CGROUP_CONDITION = "under a CPU limit (a container with cpus)"
DEPENDENCY_CONDITION = "with --io postgres or http"

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("echo_server", "info", "Server implementation and settings"),
    MetricSpec(
        "echo_requests",
        "counter",
        "Requests by outcome: ok (answered), too_large (over the size limit, answered with an error), "
        "aborted (client gone before the reply), dependency_error (its database or downstream call "
        "failed: answered ERROR dependency, or 503)",
        ("server", "outcome"),
    ),
    MetricSpec(
        "echo_request_duration_seconds",
        "histogram",
        "From the start of a request's work (its last byte read, or the reply before it on its "
        "connection written) to its reply written",
        buckets=DURATION_BUCKETS,
    ),
    MetricSpec("echo_requests_in_flight", "gauge", "Requests read but not yet answered"),
    MetricSpec("echo_received_bytes", "counter", "Request bytes received"),
    MetricSpec("echo_sent_bytes", "counter", "Reply bytes sent"),
    MetricSpec(
        "echo_non_utf8_requests", "counter", "Requests that were not valid UTF-8 (upper-cased as bytes)"
    ),
    MetricSpec("echo_threads", "gauge", "Threads alive in the server's processes"),
    MetricSpec(
        "echo_work_seconds",
        "counter",
        "Simulated work done, in seconds, by kind: cpu (--cpu-ms), blocking (--blocking-ms), "
        "io (--delay-ms, as drawn)",
        ("server", "kind"),
    ),
    MetricSpec(
        "echo_offload_threads_busy",
        "gauge",
        "Offload pool threads running a blocking call (--offload thread)",
        exported_by=offload_servers,
    ),
    MetricSpec(
        "echo_offload_tasks_queued",
        "gauge",
        "Blocking calls waiting for a free offload pool thread",
        exported_by=offload_servers,
    ),
    MetricSpec(
        "echo_dependency_pool_wait_seconds",
        "histogram",
        "How long a call waited for its connection to the dependency: psycopg_pool's getconn, asyncpg's "
        "acquire, httpx until its request's first byte (a new connection's connecting included); "
        "requests never waits (0)",
        buckets=POOL_WAIT_BUCKETS,
        only_when=DEPENDENCY_CONDITION,
    ),
    MetricSpec(
        "echo_dependency_connections_in_use",
        "gauge",
        "Connections to the dependency held by calls now (requests' can exceed its pool size); "
        "gunicorn's workers summed, each with a pool of its own",
        only_when=DEPENDENCY_CONDITION,
    ),
    MetricSpec(
        "echo_dependency_pool_size",
        "gauge",
        "Connections the dependency client's pool holds at most (--pool-size, or its library's default); "
        "gunicorn's workers summed, each with a pool of its own",
        only_when=DEPENDENCY_CONDITION,
    ),
    MetricSpec(
        "echo_dependency_errors",
        "counter",
        "Requests whose dependency failed, by kind: connect (no connection), timeout (connecting, or the "
        "answer, too late), pool_timeout (no pooled connection within --pool-timeout), query (the call "
        "itself failed)",
        ("server", "kind"),
        only_when=DEPENDENCY_CONDITION,
    ),
    MetricSpec("echo_connections_active", "gauge", "Open client connections", exported_by=tcp_servers),
    MetricSpec("echo_connections_opened", "counter", "Connections accepted", exported_by=tcp_servers),
    MetricSpec(
        "echo_connections_refused",
        "counter",
        "Connections turned away with an error line: max_connections, shutdown",
        ("server", "reason"),
        exported_by=tcp_servers,
    ),
    MetricSpec(
        "echo_connections_timed_out",
        "counter",
        "Connections closed on a deadline: idle (nothing received for the idle timeout, first byte "
        "or between requests), request_deadline (a line not whole within the request timeout), "
        "not_reading (replies not taken for the idle timeout)",
        ("server", "reason"),
        exported_by=tcp_servers,
    ),
    MetricSpec(
        "echo_connection_errors",
        "counter",
        "Connections lost to an error: reset, broken_pipe, other",
        ("server", "kind"),
        exported_by=tcp_servers,
    ),
    MetricSpec(
        "echo_accept_errors",
        "counter",
        "Failed accept() calls, e.g. out of file descriptors",
        ("server", "errno"),
        exported_by=tcp_servers,
    ),
    MetricSpec(
        "echo_event_loop_lag_seconds",
        "histogram",
        "How late the event loop ran a timer probe, every 0.25 s",
        buckets=LAG_BUCKETS,
        exported_by=event_loop_servers,
    ),
    MetricSpec(
        "echo_http_workers",
        "gauge",
        "gunicorn worker processes alive (echo_server_info's workers: how many it keeps)",
        exported_by=gunicorn_servers,
    ),
    # cgroup.py: the server's own cgroup, read at scrape time.
    MetricSpec(
        "echo_cgroup_cpu_periods",
        "counter",
        "CPU limit enforcement periods of the server's cgroup (cpu.stat nr_periods)",
        only_when=CGROUP_CONDITION,
    ),
    MetricSpec(
        "echo_cgroup_cpu_throttled_periods",
        "counter",
        "Periods in which the cgroup used up its CPU quota and was throttled (cpu.stat nr_throttled)",
        only_when=CGROUP_CONDITION,
    ),
    MetricSpec(
        "echo_cgroup_cpu_throttled_seconds",
        "counter",
        "Time the cgroup's threads were held back by its CPU limit (cpu.stat throttled_usec)",
        only_when=CGROUP_CONDITION,
    ),
    # --- the downstream service (echolab downstream): the servers' dependency ---------
    MetricSpec(
        "echo_downstream_requests",
        "counter",
        "Requests answered, by HTTP status: 200 (slept and answered), 400 (not a delay in range), "
        "404 (another path), 405 (another method)",
        ("code",),
        exported_by=no_server,
        side="downstream",
    ),
    MetricSpec(
        "echo_downstream_calls_in_progress",
        "gauge",
        "Calls sleeping now: as many as the callers' pools let through at once",
        (),
        exported_by=no_server,
        side="downstream",
    ),
    MetricSpec(
        "echo_downstream_calls_in_progress_peak",
        "gauge",
        "The most calls in progress at once since the service started",
        (),
        exported_by=no_server,
        side="downstream",
    ),
    # --- the load generators' side (every Locust process) ----------------------------
    MetricSpec(
        "echo_client_requests",
        "counter",
        "Requests completed, whether they succeeded or failed",
        ("server", "framing"),
        side="client",
    ),
    MetricSpec(
        "echo_client_failures",
        "counter",
        "Failed requests by kind: " + ", ".join(FAILURE_KINDS),
        ("server", "kind"),
        side="client",
    ),
    MetricSpec(
        "echo_client_request_duration_seconds",
        "histogram",
        "Request time as the client saw it, connecting included for oneshot",
        buckets=DURATION_BUCKETS,
        side="client",
    ),
    MetricSpec(
        "echo_client_users",
        "gauge",
        "Users of this server running: in this process, or on a master the total its workers report",
        side="client",
    ),
    MetricSpec(
        "echo_client_think_time_seconds",
        "gauge",
        "Seconds each user waits between requests (--think-time)",
        side="client",
    ),
    MetricSpec("echo_client", "info", "Locust process role: local, master or worker", (), side="client"),
    MetricSpec(
        "echo_client_running",
        "gauge",
        "1 while this process runs a load test (spawning or running users), else 0",
        (),
        side="client",
    ),
    MetricSpec(
        "echo_client_offered_rate",
        "gauge",
        "Requests/s this process's users of the server are to send in an open loop (--target-rps; 0: "
        "closed loop); on a master, its workers' total",
        side="client",
    ),
)
BY_NAME = {spec.name: spec for spec in METRICS}
INSTRUMENTS: dict[str, Callable[..., Any]] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
FAMILIES: dict[str, Callable[..., Metric]] = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
    "info": InfoMetricFamily,
}


def spec(name: str) -> MetricSpec:
    return BY_NAME[name]


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

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), list(self.counts), strict=True):
            total += count
            out.append((bound, total))
        return out


# A sample of a metric: a number; a number per value of its second label; a histogram's; an info's labels.
Sample = float | Mapping[str, float] | Mapping[str, str] | Buckets


def family(name: str, server: str, value: Sample) -> Metric:
    """The metric ``name`` with one server's sample (see :meth:`MetricSpec.family`)."""
    return spec(name).family({server: value})


def nowhere(*_: object) -> None:
    """Every update of a recorder whose metrics are off: it records nowhere."""


def holding(lock: threading.Lock, update: Callable[..., None]) -> Callable[..., None]:
    """``update``, holding ``lock``."""

    def locked(*args: Any) -> None:
        with lock:
            update(*args)

    return locked


class Recorder:
    """What a server records as it serves: one method per event, named in :attr:`UPDATES`.

    With metrics off the same object records nowhere: every update is
    :func:`nowhere`, so each costs a call and nothing else, which is what
    ``--no-metrics`` measures against. With a lock, every
    update holds it: ``+=`` is not atomic across threads.
    """

    UPDATES: ClassVar[tuple[str, ...]]

    def __init__(self, enabled: bool = True, lock: threading.Lock | None = None) -> None:
        for name in self.UPDATES:
            if not enabled:
                setattr(self, name, nowhere)
            elif lock is not None:
                setattr(self, name, holding(lock, getattr(self, name)))


class ServerMetrics(Recorder, Collector):
    """What one TCP server counts, in plain attributes; exported under its ``server`` label when scraped."""

    UPDATES = (
        "answered",
        "worked",
        "not_answered",
        "non_utf8",
        "connection_opened",
        "connection_refused",
        "connection_timed_out",
        "connection_error",
        "accept_error",
        "loop_lag",
        "dependency_pool",
        "dependency_acquired",
        "dependency_released",
        "dependency_failed",
    )

    def __init__(
        self,
        server: Server,
        info: Mapping[str, str],
        enabled: bool = True,
        lock: threading.Lock | None = None,
    ) -> None:
        self.server = server
        self.info = dict(info)
        self.ok = self.too_large = self.aborted = self.dependency_error = 0  # the OUTCOMES
        self.duration = Buckets(DURATION_BUCKETS)
        self.non_utf8_requests = 0
        self.received_bytes = self.sent_bytes = 0
        self.opened = 0
        self.timed_out = dict.fromkeys(TIMEOUT_REASONS, 0)
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.errors = dict.fromkeys(CONNECTION_ERRORS, 0)
        # Every errno the servers count exists from the start, at 0: a series that appears only
        # with the first error cannot be rated or alerted on before it.
        self.accept_errors = {errno.errorcode[number]: 0 for number in sorted(RESOURCE_ERRNOS)}
        self.lag = Buckets(LAG_BUCKETS)
        self.cpu_seconds = self.blocking_seconds = self.io_seconds = 0.0
        self.dependency = self.info.get("io", "timer") != "timer"  # the dependency's metrics, only then
        self.pool_wait = Buckets(POOL_WAIT_BUCKETS)
        self.pool_size = self.in_use = 0
        self.dependency_errors = dict.fromkeys(DEPENDENCY_ERRORS, 0)
        self._active: Callable[[], int] = lambda: 0
        self._in_flight: Callable[[], int] = lambda: 0
        self._pool: Callable[[], tuple[int, int]] = lambda: (0, 0)
        super().__init__(enabled, lock)

    # --- updates (the hot ones first) --------------------------------------

    def answered(self, count: int, duration: float, received: int, sent: int) -> None:
        self.ok += count
        self.duration.observe(duration, count)
        self.received_bytes += received
        self.sent_bytes += sent

    def worked(self, cpu: float, blocking: float, io: float) -> None:
        self.cpu_seconds += cpu
        self.blocking_seconds += blocking
        self.io_seconds += io

    def not_answered(self, outcome: str, count: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + count)

    def non_utf8(self, count: int = 1) -> None:
        self.non_utf8_requests += count

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_refused(self, reason: str) -> None:
        self.refused[reason] += 1

    def connection_timed_out(self, reason: str) -> None:
        self.timed_out[reason] += 1

    def connection_error(self, kind: str) -> None:
        self.errors[kind] += 1

    def accept_error(self, errno_name: str) -> None:
        self.accept_errors[errno_name] = self.accept_errors.get(errno_name, 0) + 1

    def loop_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    # The dependency client's (servers/dependency.Events).

    def dependency_pool(self, size: int) -> None:
        self.pool_size = size

    def dependency_acquired(self, waited: float) -> None:
        self.in_use += 1
        self.pool_wait.observe(waited)

    def dependency_released(self) -> None:
        self.in_use -= 1

    def dependency_failed(self, kind: str) -> None:
        self.dependency_errors[kind] += 1

    def track(self, active: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self._active, self._in_flight = active, in_flight

    @property
    def requests_in_flight(self) -> int:
        """What ``echo_requests_in_flight`` shows (with metrics off too: for the drain's log)."""
        return self._in_flight()

    def track_pool(self, busy_and_queued: Callable[[], tuple[int, int]]) -> None:
        self._pool = busy_and_queued

    # --- export ------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        name = self.server.name
        yield family("echo_server", name, self.info)
        yield family("echo_requests", name, {outcome: getattr(self, outcome) for outcome in OUTCOMES})
        yield family("echo_request_duration_seconds", name, self.duration)
        yield family("echo_non_utf8_requests", name, self.non_utf8_requests)
        yield family("echo_received_bytes", name, self.received_bytes)
        yield family("echo_sent_bytes", name, self.sent_bytes)
        yield family("echo_connections_opened", name, self.opened)
        yield family("echo_connections_refused", name, self.refused)
        yield family("echo_connections_timed_out", name, self.timed_out)
        yield family("echo_connection_errors", name, self.errors)
        yield family("echo_accept_errors", name, dict(self.accept_errors))
        yield family("echo_connections_active", name, self._active())
        yield family("echo_requests_in_flight", name, self._in_flight())
        yield family("echo_threads", name, threading.active_count())
        work = (self.cpu_seconds, self.blocking_seconds, self.io_seconds)
        yield family("echo_work_seconds", name, dict(zip(WORK_KINDS, work, strict=True)))
        if offload_servers(self.server):
            busy, queued = self._pool()
            yield family("echo_offload_threads_busy", name, busy)
            yield family("echo_offload_tasks_queued", name, queued)
        if event_loop_servers(self.server):
            yield family("echo_event_loop_lag_seconds", name, self.lag)
        if self.dependency:
            yield family("echo_dependency_pool_wait_seconds", name, self.pool_wait)
            yield family("echo_dependency_connections_in_use", name, self.in_use)
            yield family("echo_dependency_pool_size", name, self.pool_size)
            yield family("echo_dependency_errors", name, self.dependency_errors)


class CgroupMetrics(Collector):
    """The CPU throttling of the server's cgroup (:mod:`echolab.cgroup`), read when Prometheus scrapes."""

    def __init__(self, server: Server, stat: cgroup.CpuStat) -> None:
        self.server, self.stat = server, stat

    def collect(self) -> Iterator[Metric]:
        now = self.stat.read()
        if now is None:  # the file went away: no numbers rather than wrong ones
            return
        name = self.server.name
        yield family("echo_cgroup_cpu_periods", name, now.periods)
        yield family("echo_cgroup_cpu_throttled_periods", name, now.throttled_periods)
        yield family("echo_cgroup_cpu_throttled_seconds", name, now.throttled_seconds)


def watch_cgroup(server: Server, root: Path, registry: CollectorRegistry) -> bool:
    """Export the throttling of the cgroup mounted at ``root`` if it has a CPU limit; say whether."""
    stat = cgroup.cpu_stat(root)
    if stat is not None:
        registry.register(CgroupMetrics(server, stat))
    return stat is not None


def start(
    server: Server,
    info: Mapping[str, str],
    enabled: bool,
    host: str,
    port: int,
    thread_safe: bool = False,
    registry: CollectorRegistry = REGISTRY,
    cgroup_root: Path = cgroup.ROOT,
) -> tuple[ServerMetrics, int]:
    """Create the server's metrics and serve /metrics; return them and the port (0 asks for any free one)."""
    info = {**info, **interpreters.here().facts()}
    metrics = ServerMetrics(server, info, enabled, threading.Lock() if thread_safe else None)
    if not enabled:
        return metrics, 0
    # The *_created series double what Prometheus stores and no panel uses them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry.register(metrics)
    watch_cgroup(server, cgroup_root, registry)
    with binding("metrics", host, port):
        http_server, _ = start_http_server(port, addr=host, registry=registry)
    return metrics, int(http_server.server_port)
