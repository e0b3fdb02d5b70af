"""The metrics of a Locust process: what its users saw of each server, counted per request, read when scraped.

Every Locust process (master, each worker, or a single local one) serves its
own ``/metrics``. Workers of one host cannot share a port, so each takes the
first free one from ``--metrics-port`` upwards (a master on 9646 and three
workers get 9646..9649, in start order), then any free port; the log says
which. Importing this module imports Locust (see :mod:`.locust_plugin`).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Mapping

from locust.env import Environment
from locust.runners import MasterRunner, Runner, WorkerRunner
from prometheus_client import REGISTRY, Metric, start_http_server
from prometheus_client.registry import Collector

from ..catalogue import SERVERS
from ..metrics import DURATION_BUCKETS, FAILURE_KINDS, Buckets, spec

METRICS_PORT_TRIES = 32  # then an ephemeral port


class Tally:
    """One server's counts as plain numbers, which the user updates per request.

    prometheus_client guards every ``inc``/``observe`` with a lock, which under
    gevent is a Python-level lock: three of them per request cost more than
    the rest of our bookkeeping. Greenlets never run in parallel, so plain
    ``+=`` is safe here; :class:`ClientCollector` turns the numbers into the
    metric families when Prometheus scrapes.
    """

    __slots__ = ("duration", "failures", "requests")

    def __init__(self, framings: tuple[str, ...]) -> None:
        self.requests = dict.fromkeys(framings, 0)
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)
        self.duration = Buckets(DURATION_BUCKETS)

    def add(self, framing: str, elapsed: float, failure: str | None) -> None:
        """One request, done after ``elapsed`` seconds; ``failure`` is its kind, None if it succeeded."""
        self.requests[framing] += 1
        self.duration.observe(elapsed)
        if failure is not None:
            self.failures[failure] += 1


class ClientCollector(Collector):
    """What one Locust process saw, per server; names and labels from the metrics catalogue."""

    def __init__(self) -> None:
        self.tallies = {server.name: Tally(server.transport.framings) for server in SERVERS}
        self.role = "local"
        self.users_by_server: Callable[[], Mapping[str, int]] = dict
        self.think_time = 0.0

    def track(self, role: str, users_by_server: Callable[[], Mapping[str, int]], think_time: float) -> None:
        """Count the users when Prometheus scrapes: nothing to update per user."""
        self.role, self.users_by_server, self.think_time = role, users_by_server, think_time

    def collect(self) -> Iterator[Metric]:
        tallies, running = self.tallies, self.users_by_server()
        yield spec("echo_client_requests").family({server: t.requests for server, t in tallies.items()})
        yield spec("echo_client_failures").family({server: t.failures for server, t in tallies.items()})
        duration = spec("echo_client_request_duration_seconds")
        yield duration.family({server: t.duration for server, t in tallies.items()})
        yield spec("echo_client_users").family({server: running.get(server, 0) for server in tallies})
        yield spec("echo_client_think_time_seconds").family(dict.fromkeys(tallies, self.think_time))
        yield spec("echo_client").family({"": {"role": self.role}})


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
