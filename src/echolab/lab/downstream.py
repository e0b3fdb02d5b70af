"""The downstream service as the lab runs it: a process on free loopback ports, and a contender to measure.

``measure(DOWNSTREAM, [2000, 5000], 100, duration, warmup, extra=delay_path(100))``
(:func:`echolab.lab.sweep.measure`) loads it with ``echolab bench --framing
http --path /delay/100`` at each level and samples its CPU: its capacity, to
report beside what the servers drive through it (it must never be their
bottleneck). ``python -m echolab.lab.downstream`` prints that table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..launcher import HOST, Process, free_port
from ..load.bench_result import shown
from .contenders import Contender
from .sweep import measure


class DownstreamProcess(Process):
    """``echolab downstream`` on free loopback ports, not yet started; ready once its port accepts."""

    def __init__(
        self,
        options: Sequence[str] = (),
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        host: str = HOST,
    ) -> None:
        port, self.metrics_port = free_port(host), free_port(host)
        argv = [
            sys.executable, "-m", "echolab", "downstream", "--host", host, "--port", str(port),
            "--metrics-port", str(self.metrics_port), *options,
        ]  # fmt: skip
        super().__init__(argv, name="downstream", log=log, env=env, host=host, port=port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def delay_path(delay_ms: float) -> tuple[str, ...]:
    """The bench client's flags that call ``GET /delay/<delay_ms>``."""
    return ("--path", f"/delay/{delay_ms:g}")


@dataclass(frozen=True)
class Downstream(Contender):
    """The downstream service as a contender of the sweep: the delay is in each request, not in the server."""

    def process(self, delay_ms: float, options: Sequence[str] = ()) -> Process:
        return DownstreamProcess(("--log-level", "warning", *options))


DOWNSTREAM = Downstream("downstream", "async", "http", "#444444")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The downstream service's capacity: req/s at each level.")
    parser.add_argument("--levels", default="2000,5000", help="concurrent calls (default 2000,5000)")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="each call's delay (default 100)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each (default 1)")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]
    for row in measure(
        DOWNSTREAM, levels, args.delay_ms, args.duration, args.warmup, delay_path(args.delay_ms)
    ):
        print(
            f"{row.connections:>6,} calls of {args.delay_ms:g} ms: {row.throughput:>8,.0f} req/s "
            f"({shown(row.bound_fraction, '.0%')} of the bound), p99 {shown(row.latency('p99'), ',.0f')} ms, "
            f"errors {row.error_count:,}, downstream CPU {row.server_cpu_percent:.0f}%, "
            f"client CPU {row.client_cpu_percent or 0:.0f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
