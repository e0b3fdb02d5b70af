"""A cgroup filesystem's files as a server reads them, written to a folder (``--cgroup-root``).

No test machine is a container with a CPU limit under cgroup v2, so the
servers read these instead: the same files, with numbers a test chose.
"""

from __future__ import annotations

from pathlib import Path

PERIOD_US = 100000


def write_cgroup(
    root: Path, *, version: int = 2, quota_us: int | None = 50000, periods: int = 0, throttled: int = 0,
    throttled_us: int = 0,
) -> Path:  # fmt: skip
    """``root`` as a cgroup v2 (or v1: its ``cpu`` folder) with these counts; no quota: no limit."""
    if version == 2:
        root.mkdir(parents=True, exist_ok=True)
        limit = "max" if quota_us is None else str(quota_us)
        (root / "cpu.max").write_text(f"{limit} {PERIOD_US}\n")
        (root / "cpu.stat").write_text(
            f"usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods {periods}\n"
            f"nr_throttled {throttled}\nthrottled_usec {throttled_us}\nnr_bursts 0\nburst_usec 0\n"
        )
    else:
        cpu = root / "cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        (cpu / "cpu.cfs_quota_us").write_text(f"{-1 if quota_us is None else quota_us}\n")
        (cpu / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
        (cpu / "cpu.stat").write_text(
            f"nr_periods {periods}\nnr_throttled {throttled}\nthrottled_time {throttled_us * 1000}\n"
        )
    return root
