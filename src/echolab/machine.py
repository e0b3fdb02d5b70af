"""The machine a run measured on, recorded with every result so that two runs can be compared.

Figures from a different machine, Python or commit are a different
experiment; ``echolab compare`` shows these facts side by side so that a
reader can tell a regression from a change of machine.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

from . import __version__

# The libraries whose version changes what the lab measures.
PACKAGES = ("uvloop", "locust", "gunicorn", "uvicorn")


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def facts() -> dict[str, Any]:
    """Cores, CPU, memory, Python, library versions, commit, and the load average now."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "echolab": __version__,
        "versions": {name: version(name) for name in PACKAGES},
        "git_commit": git_commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def summary(machine: dict[str, Any]) -> str:
    """One line: cores, CPU, memory, Python, commit, load."""
    if not machine:
        return "machine not recorded"
    load = machine.get("load_average") or []
    parts = [
        f"{machine.get('cores')} cores",
        str(machine.get("cpu_model", "")),
        f"{machine.get('memory_gib')} GiB",
        f"Python {machine.get('python')}",
        f"commit {machine.get('git_commit') or 'unknown'}",
        f"load {load[0]:.2f} at start" if load else "",
    ]
    return ", ".join(p for p in parts if p)


# A one-minute load average above this share of the cores: other work takes a part of
# them, and the servers and the client measure lower than on a quiet machine.
BUSY_PER_CORE = 0.5


def busy(machine: dict[str, Any]) -> str | None:
    """A warning, in one line, when the load average at the start says the figures will be low."""
    load, cores = (machine.get("load_average") or [0.0])[0], machine.get("cores") or 1
    if load <= BUSY_PER_CORE * cores:
        return None
    return (
        f"load average {load:.2f} on {cores} cores: other work is running, so the figures will be lower "
        f"than on a quiet machine (under {BUSY_PER_CORE * cores:g}); compare runs made at a like load"
    )
