"""``echolab demo`` (``make demo``): the comparison anyone can run with only Python.

Starts each server natively on loopback, walks it through a concurrency
sweep with the ``echolab bench`` engine, prints a side-by-side table and a
verdict per server, and writes reports/demo-<time>/index.html.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .sweep import ServerSpec

if TYPE_CHECKING:
    from rich.table import Table

DEFAULT_LEVELS = (1, 10, 100, 500, 1000, 2000, 5000)
QUICK_LEVELS = (1, 10, 100, 1000)
SERIAL_MAX_LEVEL = 10  # one client at a time: past this it only shows queueing


def servers(framing: str) -> list[ServerSpec]:
    return [
        ServerSpec("threaded", "threaded", framing, ("--model", "thread-per-connection")),
        ServerSpec("async", "async", framing, ("--loop", "uvloop")),
        # The same question over HTTP, both on gunicorn: gthread vs an event-loop worker.
        ServerSpec("threaded-http", "threaded-http", "http"),
        ServerSpec("async-http", "async-http", "http"),
        # The article's baseline in its own protocol: with persistent
        # connections a serial server would serve its first client forever.
        ServerSpec("serial", "threaded", "oneshot", ("--model", "serial")),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"about 30 s: levels {', '.join(map(str, QUICK_LEVELS))}, short runs",
    )
    parser.add_argument(
        "--levels",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help=f"comma-separated connection counts (default {DEFAULT_LEVELS})",
    )
    parser.add_argument("--delay-ms", type=float, default=100.0, help="simulated IO (default 100)")
    parser.add_argument("--framing", choices=("lines", "oneshot"), default="lines")
    parser.add_argument("--duration", type=float, help="measured seconds per level (default 3, quick 1.5)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of load before measuring (default 1, quick 0.5)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where reports go")


def summary_table(rows: list[dict[str, Any]]) -> Table:
    """Side by side: at each concurrency level, one line per server; red where it broke."""
    from rich.table import Table

    from . import report

    table = Table(title="threads vs asyncio (closed loop; bound = connections / delay)")
    for column in (
        "conns",
        "server",
        "req/s",
        "of bound",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU",
        "RSS MiB",
        "threads",
    ):
        table.add_column(column, justify="left" if column == "server" else "right")
    levels = sorted({r["connections"] for r in rows})
    for level in levels:
        at_level = [r for r in rows if r["connections"] == level]
        for index, row in enumerate(at_level):
            errors = sum(row["errors"].values())
            fraction = row["bound_fraction"]
            table.add_row(
                f"{level:,}" if index == 0 else "",
                row["server"],
                f"{row['throughput']:,.0f}",
                f"{fraction:.0%}" if fraction is not None else "-",
                f"{row['latency_ms']['p50']:,.0f}",
                f"{row['latency_ms']['p99']:,.0f}",
                f"{errors:,}" if errors else "",
                f"{row['server_cpu_percent']:.0f}%",
                f"{row['server_rss_mb']:.0f}",
                str(row["server_threads"]),
                style=None if report.holds(row) else "red",
                end_section=index == len(at_level) - 1,
            )
    return table


def run(args: argparse.Namespace) -> int:
    from . import report

    report.require_extra()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .sweep import measure

    levels = args.levels or (QUICK_LEVELS if args.quick else DEFAULT_LEVELS)
    duration = args.duration or (1.5 if args.quick else 3.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    plan = []
    for spec in servers(args.framing):
        spec_levels = [n for n in levels if spec.name != "serial" or n <= SERIAL_MAX_LEVEL]
        if spec_levels:
            plan.append((spec, spec_levels))

    # Wide enough for the table when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 120)
    rows: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=sum(len(levels) for _, levels in plan))
        for spec, spec_levels in plan:
            progress.update(task, description=f"{spec.name:>8}")

            def done(row: dict[str, Any]) -> None:
                progress.advance(task)
                progress.console.print(
                    f"  {row['server']:>8} {row['connections']:>6,} conns "
                    f"{row['throughput']:>9,.0f} req/s "
                    f"p99 {row['latency_ms']['p99']:>8,.0f} ms"
                )

            def failed(connections: int, exc: RuntimeError, name: str = spec.name) -> None:
                progress.console.print(f"  {name:>8} {connections:>6,} conns [red]{exc}[/red]")

            rows += measure(
                spec, spec_levels, args.delay_ms, duration, warmup, on_level=done, on_error=failed
            )

    console.print(summary_table(rows))
    verdicts = [report.verdict(name, series) for name, series in report.by_server(rows).items()]
    for line in verdicts:
        console.print("• " + line)
    settings = {
        "started": started,
        "levels": list(levels),
        "delay_ms": args.delay_ms,
        "framing": args.framing,
        "duration": duration,
        "warmup": warmup,
    }
    folder = args.out / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    index = report.write(folder, rows, settings, verdicts)
    console.print(f"report: {index.resolve()}")
    return 0
