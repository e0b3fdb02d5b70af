"""``echolab demo`` (``make demo``): the comparison anyone can run with only Python.

Starts each server natively on loopback, walks it through a concurrency
sweep with the ``echolab bench`` engine, prints a side-by-side table and a
verdict per server, and writes reports/demo-<time>/index.html.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from ..settings import DemoSettings
from . import report
from .results import Row, by_server, rich_table
from .sweep import measure
from .variants import SERIAL, SERVERS_AS_THEY_ARE, Variant

QUICK_LEVELS = (1, 10, 100, 1000)
QUICK_DURATION = 1.5
QUICK_WARMUP = 0.5
SERIAL_MAX_LEVEL = 10  # one client at a time: past this it only shows queueing


def variants(settings: DemoSettings) -> list[Variant]:
    """Every server as it is (the TCP ones in the demo's framing), then the article's serial baseline."""
    chosen = [
        v if v.framing == "http" else dataclasses.replace(v, framing=settings.framing)
        for v in SERVERS_AS_THEY_ARE
    ]
    chosen.append(SERIAL)
    if settings.servers:
        unknown = set(settings.servers) - {v.name for v in chosen}
        if unknown:
            raise SystemExit(f"echolab demo: error: no server {', '.join(sorted(unknown))}")
        chosen = [v for v in chosen if v.name in settings.servers]
    return chosen


def run(settings: DemoSettings) -> int:
    report.require_extra()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    defaults = DemoSettings()
    quick = settings.quick
    levels = QUICK_LEVELS if quick and settings.levels == defaults.levels else settings.levels
    duration = QUICK_DURATION if quick and settings.duration == defaults.duration else settings.duration
    warmup = QUICK_WARMUP if quick and settings.warmup == defaults.warmup else settings.warmup
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    plan = []
    for variant in variants(settings):
        variant_levels = [n for n in levels if variant is not SERIAL or n <= SERIAL_MAX_LEVEL]
        if variant_levels:
            plan.append((variant, variant_levels))

    # Wide enough for the table when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 120)
    rows: list[Row] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=sum(len(levels) for _, levels in plan))
        for variant, variant_levels in plan:
            progress.update(task, description=f"{variant.name:>13}")

            def done(row: Row) -> None:
                progress.advance(task)
                progress.console.print(
                    f"  {row.server:>13} {row.connections:>6,} conns {row.throughput:>9,.0f} req/s "
                    f"p99 {row.latency('p99') or 0:>8,.0f} ms"
                )

            def failed(connections: int, exc: RuntimeError, name: str = variant.name) -> None:
                progress.console.print(f"  {name:>13} {connections:>6,} conns [red]{exc}[/red]")

            rows += measure(
                variant, variant_levels, settings.delay_ms, duration, warmup, on_level=done, on_error=failed
            )

    ordered = sorted(rows, key=lambda r: r.connections)
    console.print(rich_table("threads vs asyncio (closed loop; bound = connections / delay)", ordered))
    verdicts = [report.verdict(name, series) for name, series in by_server(rows).items()]
    for line in verdicts:
        console.print("• " + line)
    record = {
        "started": started,
        "levels": list(levels),
        "delay_ms": settings.delay_ms,
        "framing": settings.framing,
        "duration": duration,
        "warmup": warmup,
    }
    folder = settings.out / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    index = report.write(folder, rows, record, verdicts)
    console.print(f"report: {index.resolve()}")
    return 0
