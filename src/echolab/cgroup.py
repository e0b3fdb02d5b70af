"""CPU throttling of the server's own cgroup: what its CPU limit cost it.

The servers of the stack run under equal CPU limits; whether a limit
throttled one of them is part of a fair comparison, and no cAdvisor is at
hand, so each server reads its cgroup's ``cpu.stat`` when Prometheus scrapes
it. Inside a container the cgroup filesystem's root is the container's own
cgroup. cgroup v2 (``cpu.stat``: ``nr_periods``, ``nr_throttled``,
``throttled_usec``; the limit in ``cpu.max``) and v1 (the ``cpu`` controller:
``throttled_time`` in ns; the limit in ``cpu.cfs_quota_us``) both count.

Only a cgroup with a CPU limit can be throttled: without one (outside a
container, where the root is the host's, or a container without
``cpus``) there is nothing to report and the metrics are absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Throttling:
    """The counters of ``cpu.stat``: enforcement periods, those that ran out of quota, time held back."""

    periods: int
    throttled_periods: int
    throttled_seconds: float


@dataclass(frozen=True)
class CpuStat:
    """Where one cgroup version keeps the counters, and the unit of its throttled time."""

    stat: Path
    throttled_key: str
    seconds_per_unit: float

    def read(self) -> Throttling | None:
        """The counters now; None if the file is gone or lacks them."""
        try:
            fields = parse(self.stat.read_text())
        except OSError:
            return None
        try:
            return Throttling(
                fields["nr_periods"],
                fields["nr_throttled"],
                fields[self.throttled_key] * self.seconds_per_unit,
            )
        except KeyError:
            return None


def parse(text: str) -> dict[str, int]:
    """``cpu.stat``'s "key value" lines (lines that are not, are skipped)."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            fields[key] = int(value)
    return fields


def _limited_v2(root: Path) -> bool:
    """cpu.max is "QUOTA PERIOD", QUOTA "max" when there is no limit."""
    try:
        return (root / "cpu.max").read_text().split()[0] != "max"
    except (OSError, IndexError):
        return False


def _limited_v1(cpu: Path) -> bool:
    try:
        return int((cpu / "cpu.cfs_quota_us").read_text()) > 0  # -1: no limit
    except (OSError, ValueError):
        return False


def cpu_stat(root: Path = ROOT) -> CpuStat | None:
    """The throttling counters of the cgroup mounted at ``root``, if it has a CPU limit; else None."""
    if _limited_v2(root):
        stat = CpuStat(root / "cpu.stat", "throttled_usec", 1e-6)
    elif _limited_v1(root / "cpu"):
        stat = CpuStat(root / "cpu" / "cpu.stat", "throttled_time", 1e-9)
    else:
        return None
    return stat if stat.read() is not None else None
