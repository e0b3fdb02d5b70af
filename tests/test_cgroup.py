"""CPU throttling from the cgroup's own files: cgroup v2 and v1, and nothing without a CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.cgroup import write_cgroup
from support.scrape import Metrics

from echolab import cgroup
from echolab.catalogue import server
from echolab.metrics import watch_cgroup


@pytest.mark.parametrize("version", [2, 1])
def test_reads_the_throttling_counters(tmp_path: Path, version: int) -> None:
    write_cgroup(tmp_path, version=version, periods=1200, throttled=35, throttled_us=2_500_000)
    stat = cgroup.cpu_stat(tmp_path)
    assert stat is not None
    assert stat.read() == cgroup.Throttling(periods=1200, throttled_periods=35, throttled_seconds=2.5)


@pytest.mark.parametrize("version", [2, 1])
def test_no_cpu_limit_no_throttling(tmp_path: Path, version: int) -> None:
    write_cgroup(tmp_path, version=version, quota_us=None, periods=10)
    assert cgroup.cpu_stat(tmp_path) is None


def test_no_cgroup_files_nothing_to_read(tmp_path: Path) -> None:
    assert cgroup.cpu_stat(tmp_path) is None
    assert cgroup.cpu_stat(tmp_path / "missing") is None


def test_a_cpu_stat_without_the_counters_is_not_throttling(tmp_path: Path) -> None:
    write_cgroup(tmp_path)
    (tmp_path / "cpu.stat").write_text("usage_usec 5\nuser_usec 3\nsystem_usec 2\n")  # no cpu controller
    assert cgroup.cpu_stat(tmp_path) is None


def test_the_collector_reads_at_each_scrape_and_stops_when_the_file_goes(tmp_path: Path) -> None:
    write_cgroup(tmp_path, periods=10, throttled=1, throttled_us=1000)
    registry = CollectorRegistry()
    assert watch_cgroup(server("async"), tmp_path, registry)

    def scrape() -> Metrics:
        return Metrics.parse(generate_latest(registry).decode())

    assert scrape().value("echo_cgroup_cpu_throttled_seconds_total", server="async") == 0.001
    write_cgroup(tmp_path, periods=20, throttled=4, throttled_us=250_000)
    now = scrape()
    assert now.value("echo_cgroup_cpu_periods_total", server="async") == 20
    assert now.value("echo_cgroup_cpu_throttled_periods_total", server="async") == 4
    assert now.value("echo_cgroup_cpu_throttled_seconds_total", server="async") == 0.25
    (tmp_path / "cpu.stat").unlink()
    assert not [name for name, _ in scrape() if name.startswith("echo_cgroup_")]


def test_nothing_is_exported_without_a_limit(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    assert not watch_cgroup(server("threaded"), tmp_path, registry)
    assert "echo_cgroup" not in generate_latest(registry).decode()
