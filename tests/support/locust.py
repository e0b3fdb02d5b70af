"""Locust as the tests run it: always in a subprocess, its log, its /metrics, its final stats.

Importing Locust here would monkey-patch the test process for gevent.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .scrape import Metrics
from .servers import HOST, clean_environment
from .waiting import INTERVAL, poll_until

DEADLINE = 30.0  # seconds any wait may take before the test fails
LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
TCP_USERS = ("ThreadedUser", "AsyncUser")
METRICS_LOG = re.compile(r"client metrics \((\w+)\) on http://[^:]+:(\d+)/metrics")


class LocustProcess:
    """``python -m locust ...``: its log, its /metrics, its final stats."""

    def __init__(self, argv: list[str], workdir: Path, name: str, users: tuple[str, ...]) -> None:
        self.log_path = workdir / f"{name}.log"
        self.stats_prefix = workdir / name
        env = clean_environment()
        # The user classes last: Locust's positional arguments.
        command = [
            sys.executable,
            "-m",
            "locust",
            *argv,
            "--metrics-host",
            HOST,
            "--metrics-port",
            "0",
            *users,
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=log, env=env,
                                         start_new_session=True)  # fmt: skip
        self._metrics_url: str | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exited(self) -> str:
        """Why Locust cannot bring anything about any more (it exited; its log), or "" while it runs."""
        if self.proc.poll() is None:
            return ""
        return f"locust exited with {self.proc.returncode}:\n{self.log}"

    def poll(
        self,
        what: str,
        probe: Callable[[], Any],
        until: Callable[[Any], object] = bool,
        interval: float = INTERVAL,
    ) -> Any:
        """``poll_until`` for up to DEADLINE, while Locust runs."""
        return poll_until(
            probe,
            until,
            what=what,
            timeout=DEADLINE,
            interval=interval,
            gone=self.exited,
            context=lambda: self.log,
        )

    @property
    def metrics_url(self) -> str:
        """Found in the log: every process serves /metrics on a port of its own (here an ephemeral one)."""
        if self._metrics_url is None:
            match = self.poll("locust serving /metrics", lambda: METRICS_LOG.search(self.log))
            self._metrics_url = f"http://{HOST}:{match.group(2)}/metrics"
        return self._metrics_url

    def scrape(self) -> Metrics:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return Metrics.parse(response.read().decode())

    def wait_metrics(self, predicate: Callable[[Metrics], bool]) -> Metrics:
        metrics: Metrics = self.poll(f"locust's metrics matching {predicate}", self.scrape, predicate)
        return metrics

    def stop(self) -> int:
        """SIGTERM: Locust stops its users, writes its stats and exits.

        (Not SIGINT: its KeyboardInterrupt can land in a user's greenlet. Not for a
        headless shape run either: Locust installs its SIGTERM handler after the shape ends.)
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        return self.proc.wait(DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Locust's final stats per name, from ``--json-file`` (its CSV lags up to a second)."""
        with open(f"{self.stats_prefix}.json") as stats:
            return {entry["name"]: entry for entry in json.load(stats)}

    def reported(self) -> dict[str, int]:
        """Requests per name in the stats a ``--csv`` run rewrites every second (on a master: what
        its workers have reported so far); {} while there are none, or mid-rewrite."""
        try:
            with open(f"{self.stats_prefix}_stats.csv", newline="") as stats:
                return {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(stats)}
        except (OSError, KeyError, ValueError, TypeError):
            return {}

    def wait_reported(self, names: tuple[str, ...], count: int) -> None:
        """Poll the ``--csv`` stats until each of ``names`` has ``count`` requests."""
        self.poll(
            f"stats showing {count} requests for each of {names}",
            self.reported,
            lambda reported: all(reported.get(name, 0) >= count for name in names),
        )

    def error_report(self) -> list[str]:
        """The lines of the error report Locust prints when it exits (without ``--json-file``)."""
        report = self.log.partition("Error report")[2]
        return [line.strip() for line in report.splitlines() if re.match(r"\s*\d+\s", line)]
