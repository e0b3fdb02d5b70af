"""The metrics catalogue and the TCP servers' collector, without a server."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.cgroup import write_cgroup
from support.scrape import Metrics

from echolab.catalogue import server
from echolab.metrics import METRICS, ServerMetrics, nowhere, watch_cgroup

UPDATES = [
    name
    for name, method in inspect.getmembers(ServerMetrics, inspect.isfunction)
    if not name.startswith("_") and name not in ("collect", "track", "track_pool", "describe")
]


@pytest.mark.parametrize(
    ("enabled", "lock"), [(True, threading.Lock()), (False, None)], ids=["locked", "off"]
)
def test_every_update_is_overridden(enabled: bool, lock: threading.Lock | None) -> None:
    """A new update method left out of the lock wrappers would silently race (or count when it must not)."""
    metrics = ServerMetrics(server("threaded"), {}, enabled, lock)
    missing = [name for name in UPDATES if name not in vars(metrics)]
    assert not missing, f"{'locked' if lock else 'metrics off'}: {missing} not overridden"
    if not enabled:
        assert all(vars(metrics)[name] is nowhere for name in UPDATES)


@pytest.mark.parametrize("name", ["threaded", "async"])
def test_the_collector_exports_what_the_catalogue_says(name: str, tmp_path: Path) -> None:
    """Under a CPU limit, and with a real dependency, so that their metrics are there too."""
    kind = server(name)
    metrics = ServerMetrics(kind, {"framing": "lines", "io": "postgres"})
    metrics.answered(3, 0.1, 12, 12)
    registry = CollectorRegistry()
    registry.register(metrics)
    assert watch_cgroup(kind, write_cgroup(tmp_path), registry)
    scraped = Metrics.parse(generate_latest(registry).decode())
    exported = {n for n, _ in scraped}
    for metric in METRICS:
        if metric.side != "server":
            continue
        expected = metric.exposed + ("_count" if metric.kind == "histogram" else "")
        assert (expected in exported) == metric.exported_by(kind), (metric.name, kind.name)
    assert scraped.value("echo_requests_total", server=name, outcome="ok") == 3
