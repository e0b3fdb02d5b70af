"""What every server reports about its processes: its cgroup's CPU throttling, and for the HTTP
servers their gunicorn workers and the workers' garbage collector."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.cgroup import write_cgroup
from support.servers import HTTP_SERVERS, HttpTestServer, TestServer

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
    server = start_http(name)  # two workers
    for i in range(20):
        assert server.echo(b"garbage %d" % i) == b"GARBAGE %d" % i
    # Each worker copies its gc.get_stats() into the files the master sums, every second.
    scraped = server.wait_metrics(lambda m: m.value("python_gc_collections_total", generation="0") > 0)
    assert scraped.value("echo_http_workers", server=name) == 2
    generations = {
        dict(labels)["generation"] for sample, labels in scraped if sample == "python_gc_collections_total"
    }
    assert generations == {"0", "1", "2"}
