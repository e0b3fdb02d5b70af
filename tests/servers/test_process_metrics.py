"""What every server reports about its processes: its cgroup's CPU throttling, and for the HTTP
servers their gunicorn workers and the workers' garbage collector."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cgroup import write_cgroup
from support.scrape import Metrics
from support.servers import HTTP_SERVERS, HttpTestServer, TestServer, clean_environment

from echolab.catalogue import NAMES


@pytest.mark.parametrize("name", NAMES)
def test_exports_the_throttling_of_its_cgroup(
    start_server: Callable[..., TestServer], tmp_path: Path, name: str
) -> None:
    root = write_cgroup(tmp_path / "cgroup", periods=100, throttled=7, throttled_us=30_000)
    server = start_server(name, "--cgroup-root", str(root))
    first = server.scrape()
    assert first.value("echo_cgroup_cpu_throttled_periods_total", server=name) == 7
    assert first.value("echo_cgroup_cpu_throttled_seconds_total", server=name) == 0.03
    write_cgroup(root, periods=250, throttled=9, throttled_us=40_000)  # read again at every scrape
    assert server.scrape().value("echo_cgroup_cpu_periods_total", server=name) == 250


@pytest.mark.parametrize("name", ["async", HTTP_SERVERS[0]])
def test_no_cpu_limit_no_cgroup_series(
    start_server: Callable[..., TestServer], tmp_path: Path, name: str
) -> None:
    root = write_cgroup(tmp_path / "cgroup", quota_us=None, periods=100)
    scraped = start_server(name, "--cgroup-root", str(root)).scrape()
    assert not [sample for sample, _ in scraped if sample.startswith("echo_cgroup_")]


@pytest.mark.parametrize("name", HTTP_SERVERS)
def test_http_master_counts_its_workers_and_their_collections(
    start_http: Callable[..., HttpTestServer], name: str
) -> None:
    """The workers' GC counts reach the master's scrape (when a collection happens is the interpreter's
    business: a worker serving a few requests may not collect at all, so the test asks for the series)."""
    server = start_http(name)  # two workers
    assert server.echo(b"garbage") == b"GARBAGE"
    # The master's own registry has no GC collector: these series come from the files each worker
    # creates as it loads the app.
    generations = {"0", "1", "2"}

    def collected(scrape: Metrics) -> set[str]:
        return {
            dict(labels)["generation"] for sample, labels in scrape if sample == "python_gc_collections_total"
        }

    scraped = server.wait_metrics(lambda m: collected(m) == generations)
    assert scraped.value("echo_http_workers", server=name) == 2
    for sample in ("python_gc_objects_collected_total", "python_gc_objects_uncollectable_total"):
        assert {dict(labels)["generation"] for s, labels in scraped if s == sample} == generations


COPY_COLLECTIONS = """
import gc, sys, time
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from echolab.servers.gunicorn import export_garbage_collections
export_garbage_collections(interval=0.02)
for _ in range(3):
    gc.collect()  # a full collection: generation 2
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
deadline = time.monotonic() + 10
while b'python_gc_collections_total{generation="2"} 3.0' not in generate_latest(registry):
    assert time.monotonic() < deadline, generate_latest(registry).decode()
    time.sleep(0.02)
"""


def test_a_workers_collections_are_copied_into_the_metrics_files(tmp_path: Path) -> None:
    """In a process of its own, as a worker: prometheus_client picks multiprocess mode at import."""
    env = clean_environment({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    result = subprocess.run([sys.executable, "-c", COPY_COLLECTIONS], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
