"""Locust support for the echo servers: the arguments, the client-side metrics, the user classes.

Like the modules in ``locust.contrib``, this holds what a locustfile needs to
load our servers; ``loadtest/locustfile.py`` only calls :func:`setup` and
:func:`user_classes`. There is one user class per server of the catalogue,
so Locust's stats, charts and the client-side metrics keep them apart: the
TCP servers' users speak the line protocol (:mod:`echolab.load.locust_tcp`),
the HTTP servers' are FastHttpUsers (:mod:`echolab.load.locust_http`).

Importing this module imports Locust, which monkey-patches the process for
gevent: never import it from the servers or the asyncio benchmark
(``echolab.load.capacity`` runs Locust in a subprocess instead).

Every Locust process (master, each worker, or a single local one) serves its
own ``/metrics``. Workers of one host cannot share a port, so each takes the
first free one from ``--metrics-port`` upwards (a master on 9646 and three
workers get 9646..9649, in start order), then any free port; the log says
which.
"""

from __future__ import annotations

import errno
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from itertools import accumulate
from typing import Any

from locust import User, events
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

from ..catalogue import BY_NAME, SERVERS, Server
from ..metrics import DURATION_BUCKETS, FAILURE_KINDS, spec
from ..settings import FRAMINGS, BenchSettings
from . import locust_cluster, locust_thresholds, locust_web

log = logging.getLogger("echolab.locust")

DEFAULT_METRICS_PORT = 9646
METRICS_PORT_TRIES = 32  # then an ephemeral port
ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
BOUNDS = DURATION_BUCKETS
BUCKET_LABELS = [*map(str, BOUNDS), "+Inf"]  # as prometheus_client writes "le"


def framings(server: Server) -> tuple[str, ...]:
    """What the users of ``server`` can speak."""
    return ("http",) if server.transport == "http" else FRAMINGS


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

    # The targets are not web UI fields: whoever starts Locust fixes them (see locust_web).
    for server in SERVERS:
        add(f"--{server.name}-host", "127.0.0.1", f"{server.name} server's address", include_in_web_ui=False)
        add(f"--{server.name}-port", server.port, f"{server.name} server's port", include_in_web_ui=False)
    add(
        "--framing",
        "lines",
        "TCP users: lines, one persistent connection per user; oneshot, a connection per request "
        "(HTTP users keep one connection alive)",
        choices=FRAMINGS,
    )
    add("--message-size", BenchSettings.message_size, "request size in bytes, newline excluded")
    add("--think-time", 0.0, "seconds each user waits between requests")
    add("--connect-timeout", 5.0, "seconds to wait for a connection")
    add(
        "--read-timeout",
        BenchSettings.timeout,
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


def server_address(options: Any, server: str) -> tuple[str, int]:
    """The host and port the arguments give for ``server`` (``--threaded-http-host`` ...)."""
    prefix = server.replace("-", "_")
    return getattr(options, f"{prefix}_host"), getattr(options, f"{prefix}_port")


def target_url(options: Any, server: Server) -> str:
    """Where ``server``'s users send their requests, as a URL: ``tcp://async:9090``, ``http://...``."""
    host, port = server_address(options, server.name)
    scheme = "http" if server.transport == "http" else "tcp"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def make_message(size: int) -> bytes:
    """A request of ``size`` bytes, lower case, so a server that does not transform it is caught."""
    return (ALPHABET * (size // len(ALPHABET) + 1))[:size]


# --- client-side metrics ------------------------------------------------------


class Tally:
    """One server's counts as plain numbers, which the user updates per request.

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


def _family(name: str, kind: type[Any]) -> Any:
    metric = spec(name)
    return kind(metric.name, metric.help, labels=metric.labels)


class ClientCollector(Collector):
    """What one Locust process saw, per server; names and labels from the metrics catalogue."""

    def __init__(self) -> None:
        self.tallies = {server.name: Tally(framings(server)) for server in SERVERS}
        self.role = "local"
        self.users_by_server: Callable[[], Mapping[str, int]] = dict
        self.think_time = 0.0

    def track(self, role: str, users_by_server: Callable[[], Mapping[str, int]], think_time: float) -> None:
        """Count the users when Prometheus scrapes: nothing to update per user."""
        self.role, self.users_by_server, self.think_time = role, users_by_server, think_time

    def collect(self) -> Iterator[Metric]:
        requests = _family("echo_client_requests", CounterMetricFamily)
        failures = _family("echo_client_failures", CounterMetricFamily)
        duration = _family("echo_client_request_duration_seconds", HistogramMetricFamily)
        users = _family("echo_client_users", GaugeMetricFamily)
        think = _family("echo_client_think_time_seconds", GaugeMetricFamily)
        running = self.users_by_server()
        for server, tally in self.tallies.items():
            for framing, count in tally.requests.items():
                requests.add_metric((server, framing), count)
            for kind, count in tally.failures.items():
                failures.add_metric((server, kind), count)
            cumulative = list(accumulate(tally.buckets))
            duration.add_metric((server,), list(zip(BUCKET_LABELS, cumulative, strict=True)), tally.seconds)
            users.add_metric((server,), running.get(server, 0))
            think.add_metric((server,), self.think_time)
        yield from (requests, failures, duration, users, think)
        info = InfoMetricFamily("echo_client", spec("echo_client").help)
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
    """Users running per server: this process's, or on a master what its workers last reported."""

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
            server = getattr(classes.get(name), "server", None)
            if server is not None:
                totals[server] = totals.get(server, 0) + count
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


def show_targets(environment: Environment) -> None:
    """Each user class's ``host``: its server's address, for the web UI and the HTML report to show."""
    classes: Mapping[str, Any] = environment.available_user_classes or environment.user_classes_by_name
    for cls in classes.values():
        server = getattr(cls, "server", None)
        if server is not None and environment.parsed_options is not None:
            cls.host = target_url(environment.parsed_options, BY_NAME[server])


def on_init(environment: Environment, **_: Any) -> None:
    """Start this process's /metrics, show the targets, guard the web UI (every process fires ``init``)."""
    show_targets(environment)
    locust_web.install(environment, user_counter(environment))
    options = environment.parsed_options
    metrics = client_metrics()
    metrics.track(role(environment.runner), user_counter(environment), options.think_time if options else 0.0)
    wanted = options.metrics_port if options else DEFAULT_METRICS_PORT
    host = options.metrics_host if options else "0.0.0.0"
    port = serve_metrics(wanted, host)
    moved = bool(wanted) and port != wanted  # expected for the second worker on a host: log, don't warn
    log.info("client metrics (%s) on http://%s:%d/metrics%s", role(environment.runner), host, port,
             f" (port {wanted} was taken)" if moved else "")  # fmt: skip


def setup(hooks: Any = events) -> None:
    """Wire the arguments and the metrics into Locust's events (call once, from the locustfile)."""
    from . import open_loop

    hooks.init_command_line_parser.add_listener(add_arguments)
    hooks.init.add_listener(on_init)
    open_loop.setup(hooks)
    locust_thresholds.setup(hooks)
    locust_cluster.setup(hooks)


def user_class_name(server: Server) -> str:
    """``threaded-http`` -> ``ThreadedHttpUser``: what Locust's UI, stats and command line call its users."""
    return "".join(part.capitalize() for part in server.name.split("-")) + "User"


def user_classes() -> dict[str, type[User]]:
    """One user class per server of the catalogue, by class name (a locustfile puts them in its globals)."""
    from .locust_http import HttpEchoUser
    from .locust_tcp import EchoUser

    classes: dict[str, type[User]] = {}
    for server in SERVERS:
        base: type[User] = HttpEchoUser if server.transport == "http" else EchoUser
        flag = f"--{server.name}-host/--{server.name}-port"
        doc = f"Loads the {server.name} server ({flag}): {server.summary}."
        classes[user_class_name(server)] = type(
            user_class_name(server), (base,), {"server": server.name, "__doc__": doc}
        )
    return classes
