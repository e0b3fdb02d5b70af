"""Locust support for the echo protocol: a TCP user, the arguments, client-side metrics.

Like the modules in ``locust.contrib``, this holds what a locustfile needs to
load our servers; ``loadtest/locustfile.py`` only names the users. The TCP
user speaks the protocol through :class:`echolab.client.EchoClient`, whose
blocking sockets gevent (imported by Locust) makes cooperative; the HTTP user
(:mod:`echolab.loadgen_http`) is Locust's FastHttpUser. Both count into the
same client-side metrics, under their ``target``.

Importing this module imports Locust, which monkey-patches the process for
gevent: never import it from the servers or the asyncio benchmark
(``echolab.locust_capacity`` runs Locust in a subprocess instead).

Every Locust process (master, each worker, or a single local one) serves its
own ``/metrics``. Workers of one host cannot share a port, so each takes the
first free one from ``--metrics-port`` upwards (a master on 9646 and three
workers get 9646..9649, in start order), then any free port; the log says
which.
"""

from __future__ import annotations

import errno
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from itertools import accumulate
from typing import Any, ClassVar

import gevent
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, Runner, WorkerRunner
from prometheus_client import REGISTRY, Metric, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from . import config
from .client import EchoClient, failure_kind
from .metrics import DURATION_BUCKETS

log = logging.getLogger("echolab.loadgen")

# Every target (a server's `server` label) and the framings its users speak.
TARGETS: dict[str, tuple[str, ...]] = {
    "threaded": config.FRAMINGS,
    "async": config.FRAMINGS,
    "threaded-http": ("http",),
    "async-http": ("http",),
}
FAILURE_KINDS = ("wrong_reply", "server_error", "closed", "refused", "reset", "timeout", "other")
DEFAULT_METRICS_PORT = 9646
METRICS_PORT_TRIES = 32  # then an ephemeral port
ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
BOUNDS = DURATION_BUCKETS
BUCKET_LABELS = [*map(str, BOUNDS), "+Inf"]  # as prometheus_client writes "le"


def add_arguments(parser: Any) -> None:
    """Register the custom arguments (a listener of ``events.init_command_line_parser``).

    The web UI turns each into a form field and converts what is typed there
    with ``type(default)``, so float settings need float defaults.
    """
    # Not an argument group: only the parser's own add_argument marks arguments for the web UI.

    def add(flag: str, default: Any, text: str, **kwargs: Any) -> None:
        env = "LOCUST_" + flag.lstrip("-").replace("-", "_").upper()
        parser.add_argument(
            flag,
            default=default,
            env_var=env,
            type=type(default),
            help=f"{text} (env {env}; default {default!r})",
            **kwargs,
        )

    add("--threaded-host", "127.0.0.1", "threaded server's address")
    add("--threaded-port", config.BY_KEY["serve", "port"].default, "threaded server's echo port")
    add("--async-host", "127.0.0.1", "async server's address")
    add("--async-port", 9091, "async server's echo port")
    add("--threaded-http-host", "127.0.0.1", "threaded-http server's address")
    add("--threaded-http-port", 9092, "threaded-http server's HTTP port")
    add("--async-http-host", "127.0.0.1", "async-http server's address")
    add("--async-http-port", 9093, "async-http server's HTTP port")
    add(
        "--framing",
        "lines",
        "TCP users: lines, one persistent connection per user; oneshot, a connection per request "
        "(HTTP users keep one connection alive)",
        choices=config.FRAMINGS,
    )
    add(
        "--message-size",
        config.BY_KEY["bench", "message_size"].default,
        "request size in bytes, newline excluded",
    )
    add("--think-time", 0.0, "seconds each user waits between requests")
    add("--connect-timeout", 5.0, "seconds to wait for a connection")
    add(
        "--read-timeout",
        config.BY_KEY["bench", "timeout"].default,
        "seconds a request may take to be answered (TCP users: connecting included; "
        "HTTP users: each read, which for an echo is the wait for the reply)",
    )
    add("--metrics-host", "0.0.0.0", "address of this process's Prometheus /metrics", include_in_web_ui=False)
    add(
        "--metrics-port",
        DEFAULT_METRICS_PORT,
        "port of this process's Prometheus /metrics; if taken, the next free one (0: any free port)",
        include_in_web_ui=False,
    )


def target_address(options: Any, target: str) -> tuple[str, int]:
    """The host and port the arguments give for ``target`` (``--threaded-http-host`` ...)."""
    prefix = target.replace("-", "_")
    return getattr(options, f"{prefix}_host"), getattr(options, f"{prefix}_port")


def make_message(size: int) -> bytes:
    """A request of ``size`` bytes, lower case, so a server that does not transform it is caught."""
    return (ALPHABET * (size // len(ALPHABET) + 1))[:size]


# --- client-side metrics ------------------------------------------------------


class Tally:
    """One target's counts as plain numbers, which the user updates per request.

    prometheus_client guards every ``inc``/``observe`` with a lock, which under
    gevent is a Python-level lock: three of them per request cost more than
    the rest of our bookkeeping. Greenlets never run in parallel, so plain
    ``+=`` is safe here; :class:`ClientCollector` turns the numbers into the
    metric families when Prometheus scrapes.
    """

    __slots__ = ("buckets", "failures", "requests", "seconds")

    def __init__(self, framings: tuple[str, ...]) -> None:
        self.requests = dict.fromkeys(framings, 0)
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)
        # buckets[i]: requests that took at most BOUNDS[i] (and more than the bound before); the last: +Inf
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.seconds = 0.0

    def add(self, framing: str, elapsed: float, failure: str | None) -> None:
        """One request, done after ``elapsed`` seconds; ``failure`` is its kind, None if it succeeded."""
        self.requests[framing] += 1
        self.buckets[bisect_left(BOUNDS, elapsed)] += 1
        self.seconds += elapsed
        if failure is not None:
            self.failures[failure] += 1


class ClientCollector(Collector):
    """What one Locust process saw, per target; the names are a contract with the dashboards."""

    def __init__(self) -> None:
        self.tallies = {target: Tally(framings) for target, framings in TARGETS.items()}
        self.role = "local"
        self.users_by_target: Callable[[], Mapping[str, int]] = dict

    def track(self, role: str, users_by_target: Callable[[], Mapping[str, int]]) -> None:
        """Count the users when Prometheus scrapes: nothing to update per user."""
        self.role, self.users_by_target = role, users_by_target

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "echo_client_requests",
            "Requests completed, whether they succeeded or failed",
            labels=("target", "framing"),
        )
        failures = CounterMetricFamily(
            "echo_client_failures",
            "Failed requests by kind: wrong_reply, server_error, closed, refused, reset, timeout, other",
            labels=("target", "kind"),
        )
        duration = HistogramMetricFamily(
            "echo_client_request_duration_seconds",
            "Request time as the client saw it, connecting included for oneshot",
            labels=("target",),
        )
        users = GaugeMetricFamily(
            "echo_client_users",
            "Users of this target running: in this process, or on a master the total its workers report",
            labels=("target",),
        )
        running = self.users_by_target()
        for target, tally in self.tallies.items():
            for framing, count in tally.requests.items():
                requests.add_metric((target, framing), count)
            for kind, count in tally.failures.items():
                failures.add_metric((target, kind), count)
            cumulative = list(accumulate(tally.buckets))
            duration.add_metric((target,), list(zip(BUCKET_LABELS, cumulative, strict=True)), tally.seconds)
            users.add_metric((target,), running.get(target, 0))
        yield from (requests, failures, duration, users)
        info = InfoMetricFamily("echo_client", "Locust process role: local, master or worker")
        info.add_metric((), {"role": self.role})
        yield info


_collector: ClientCollector | None = None


def client_metrics() -> ClientCollector:
    """The process's metrics, registered on first use (a registry takes each name once)."""
    global _collector
    if _collector is None:
        _collector = ClientCollector()
        REGISTRY.register(_collector)
    return _collector


def user_counter(environment: Environment) -> Callable[[], dict[str, int]]:
    """Users running per target: this process's, or on a master what its workers last reported."""

    def count() -> dict[str, int]:
        runner = environment.runner
        if runner is None:
            return {}
        if isinstance(runner, MasterRunner):
            by_class: Mapping[str, int] = runner.reported_user_classes_count
        else:
            by_class = runner.user_classes_count
        classes = environment.available_user_classes or environment.user_classes_by_name
        totals: dict[str, int] = {}
        for name, count in by_class.items():
            target = getattr(classes.get(name), "target", None)
            if target is not None:
                totals[target] = totals.get(target, 0) + count
        return totals

    return count


def role(runner: Runner | None) -> str:
    if isinstance(runner, MasterRunner):
        return "master"
    if isinstance(runner, WorkerRunner):
        return "worker"
    return "local"


def serve_metrics(port: int, host: str = "0.0.0.0", tries: int = METRICS_PORT_TRIES) -> int:
    """Serve /metrics on ``port`` or the next free one, else on any; return the port."""
    candidates = [*range(port, port + tries), 0] if port else [0]
    for candidate in candidates:
        try:
            server, _ = start_http_server(candidate, addr=host)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or candidate == 0:
                raise
            continue
        return int(server.server_port)
    raise AssertionError("unreachable: port 0 either binds or raises")


def on_init(environment: Environment, **_: Any) -> None:
    """Start this process's /metrics (a listener of ``events.init``, which every process fires)."""
    metrics = client_metrics()
    metrics.track(role(environment.runner), user_counter(environment))
    options = environment.parsed_options
    wanted = options.metrics_port if options else DEFAULT_METRICS_PORT
    host = options.metrics_host if options else "0.0.0.0"
    port = serve_metrics(wanted, host)
    moved = bool(wanted) and port != wanted  # expected for the second worker on a host: log, don't warn
    log.info("client metrics (%s) on http://%s:%d/metrics%s", role(environment.runner), host, port,
             f" (port {wanted} was taken)" if moved else "")  # fmt: skip


def setup(hooks: Any = events) -> None:
    """Wire the arguments and the metrics into Locust's events (call once, from the locustfile)."""
    hooks.init_command_line_parser.add_listener(add_arguments)
    hooks.init.add_listener(on_init)


# --- the user ------------------------------------------------------------------


class ReadTimeout(TimeoutError):
    """No whole reply within ``--read-timeout`` of starting the request (connecting included)."""

    def __init__(self) -> None:
        super().__init__("timed out")


class EchoUser(User):
    """A user of one echo server (``target``): one request per task, as fast as ``--think-time`` allows.

    ``lines`` keeps one connection per user; after any error EchoClient drops
    it and the next request reconnects. ``oneshot`` connects per request.
    Every request fires Locust's request event (type = the framing, name = the
    target) and updates the client-side metrics.
    """

    abstract = True
    target: ClassVar[str]

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.client: EchoClient | None = None
        self.think_time = 0.0

    def wait_time(self) -> float:
        return self.think_time

    def on_start(self) -> None:
        options = self.environment.parsed_options
        host, port = target_address(options, self.target)
        framing = options.framing
        # No socket timeout for reads: gevent pays for one with a Timeout object per blocking read.
        # One timer per user, armed for each request, costs a fraction of that.
        self.client = EchoClient(host, port, framing, options.connect_timeout, timeout=None)
        # A repeating timer, (re)armed with again(): libev's stop() keeps only
        # the time *remaining*, so a plain timer restarted after stop() fires
        # earlier each request, and a fired one fires at once on its next start.
        self._deadline = gevent.get_hub().loop.timer(options.read_timeout, options.read_timeout)
        self._throw = gevent.getcurrent().throw  # on_start runs in the user's greenlet
        self.think_time = options.think_time
        self.message = make_message(options.message_size)
        self._tally = client_metrics().tallies[self.target]
        self._fire = self.environment.events.request.fire
        self._framing = framing

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self._deadline.close()

    @task
    def echo(self) -> None:
        client, deadline = self.client, self._deadline
        assert client is not None
        started = time.perf_counter()
        try:
            deadline.again(self._throw, ReadTimeout)
            try:
                reply = client.request(self.message)
            finally:
                deadline.stop()
        except Exception as exc:
            self._record(time.perf_counter() - started, 0, exc)
            return
        self._record(time.perf_counter() - started, len(reply), None)

    def _record(self, elapsed: float, length: int, exc: Exception | None) -> None:
        framing = self._framing
        self._tally.add(framing, elapsed, None if exc is None else failure_kind(exc))
        self._fire(
            request_type=framing,
            name=self.target,
            response_time=elapsed * 1000.0,
            response_length=length,
            exception=exc,
        )
