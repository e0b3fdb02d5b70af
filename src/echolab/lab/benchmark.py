"""``echolab benchmark`` (``make bench``): every server, the levels where they differ, one run, one table.

Run on a quiet machine; compare the rows of one run with each other (ratios),
not with another machine's figures. Writes reports/bench-<time>.json.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import statistics
import sys
import time
from typing import Any

from .. import machine
from ..settings import BenchmarkSettings
from .interrupt import Interrupted, interruptible
from .report import require_extra
from .results import Row, rich_table
from .sweep import measure
from .variants import (
    ASYNC_HTTP_BARE_ALIKE,
    ASYNC_NO_METRICS,
    BARE_H11,
    BARE_HTTPTOOLS,
    BARE_THREADED,
    BARE_UVLOOP,
    POOL,
    SERIAL,
    SERVERS_AS_THEY_ARE,
    Variant,
)

THREADED, ASYNC, THREADED_HTTP, ASYNC_HTTP = SERVERS_AS_THEY_ARE
BARE = BARE_UVLOOP

LEVELS = (100, 1000, 5000, 10000)


def plan() -> list[tuple[str, Variant, tuple[int, ...], float]]:
    """(section, server, connection levels, delay ms), in the order they run."""
    return [
        ("delay 100 ms", ASYNC, LEVELS, 100),
        ("delay 100 ms", BARE, LEVELS, 100),
        ("delay 100 ms", THREADED, LEVELS, 100),
        ("delay 100 ms", BARE_THREADED, LEVELS, 100),
        ("delay 100 ms", POOL, LEVELS, 100),
        ("delay 100 ms", SERIAL, (10,), 100),
        ("delay 100 ms", THREADED_HTTP, LEVELS, 100),
        ("delay 100 ms", ASYNC_HTTP, LEVELS, 100),
        ("delay 0", ASYNC, (10, 100), 0),
        ("delay 0", ASYNC_NO_METRICS, (10, 100), 0),
        ("delay 0", BARE, (10, 100), 0),
        ("delay 0", THREADED, (10, 100), 0),
        ("delay 0", BARE_THREADED, (10, 100), 0),
        ("delay 0", POOL, (10, 100), 0),
        ("delay 0", SERIAL, (10,), 0),
        ("delay 0", THREADED_HTTP, (10, 100), 0),
        ("delay 0", ASYNC_HTTP, (10, 100), 0),
    ]


def targets(rows: list[Row], pairs: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The async server's targets (95% of the bound at 1,000 and 5,000 connections), checked."""

    def row(server: str, delay: float, connections: int) -> Row | None:
        return next(
            (r for r in rows if r.server == server and r.delay_ms == delay and r.connections == connections),
            None,
        )

    checks = []
    for level in (1000, 5000):
        r = row("async", 100, level)
        if r and r.bound_fraction is not None:
            checks.append(
                (f"async >= 95% of the bound at {level}", r.bound_fraction >= 0.95, f"{r.bound_fraction:.1%}")
            )
    for pair in pairs:
        if pair["target"] is not None:
            low, high = min(pair["ratios"]), max(pair["ratios"])
            checks.append(
                (
                    f"{pair['name']} >= {pair['target']:.0%}",
                    pair["median_ratio"] >= pair["target"],
                    f"median {pair['median_ratio']:.2f}x over {len(pair['ratios'])} alternating rounds "
                    f"({low:.2f}-{high:.2f})",
                )
            )
    return checks


# Head-to-head comparisons: the two servers run alternately, ROUNDS times each,
# and the median of the per-round ratios is compared. On a shared, noisy
# machine one run each swings by 20% either way; alternating rounds make both
# sides meet the same noise. (name, a, b, connections, delay ms, target a/b)
ROUNDS = 5
PAIRS = (
    ("async / bare uvloop at 10000", ASYNC, BARE, 10000, 100, 1.0),
    ("delay 0: metrics on / off", ASYNC, ASYNC_NO_METRICS, 100, 0, 0.8),
    ("threaded / bare threaded at 1000", THREADED, BARE_THREADED, 1000, 100, None),
    ("delay 0: async-http hardened / bare uvicorn", ASYNC_HTTP_BARE_ALIKE, BARE_HTTPTOOLS, 100, 0, None),
    ("delay 0: uvicorn h11 / httptools", BARE_H11, BARE_HTTPTOOLS, 100, 0, None),
)


def paired(
    name: str, a: Variant, b: Variant, connections: int, delay: float, args: BenchmarkSettings
) -> dict[str, Any]:
    throughputs: dict[str, list[float]] = {a.name: [], b.name: []}
    for _ in range(ROUNDS):
        for variant in (a, b):
            (row,) = measure(variant, [connections], delay, args.duration, args.warmup)
            throughputs[variant.name].append(row.throughput)
    ratios = [x / max(y, 1.0) for x, y in zip(throughputs[a.name], throughputs[b.name], strict=True)]
    return {
        "name": name,
        "connections": connections,
        "delay_ms": delay,
        "throughputs": throughputs,
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
    }


def locust_capacity(seconds: float) -> float:
    """Requests/s one Locust process generates with our TCP user (see echolab.load.capacity)."""
    from ..load.capacity import measure_capacity
    from .variants import running

    with running(ASYNC, delay_ms=0) as (port, _):
        return measure_capacity("127.0.0.1", port, seconds=seconds)


def run(args: BenchmarkSettings) -> int:
    require_extra()
    from rich.console import Console

    # Wide enough for the table when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 150)
    record: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine.facts()}
    rows: list[Row] = []
    pairs: list[dict[str, Any]] = []
    try:
        with interruptible():
            measure_all(args, console, rows, pairs, record)
    except Interrupted as exc:
        console.print(f"[yellow]{exc}: servers stopped; writing what was measured[/yellow]")
        record["partial"] = {"signal": exc.name, "levels_done": len(rows)}
    checks = targets(rows, pairs)
    for name, ok, detail in checks:
        console.print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record |= {
        "rows": [dataclasses.asdict(r) for r in rows],
        "pairs": pairs,
        "targets": [{"target": n, "met": ok, "measured": d} for n, ok, d in checks],
    }
    path.write_text(json.dumps(record, indent=1, allow_nan=False))
    console.print(f"wrote {path}" + (" (partial)" if record.get("partial") else ""))
    return 128 + signal.Signals[record["partial"]["signal"]] if record.get("partial") else 0


def measure_all(
    args: BenchmarkSettings,
    console: Any,
    rows: list[Row],
    pairs: list[dict[str, Any]],
    record: dict[str, Any],
) -> None:
    """The sweeps, the paired rounds and Locust's capacity, into ``rows``, ``pairs`` and ``record``."""
    for _section, variant, levels, delay in plan():
        if args.only and args.only not in variant.name:
            continue

        def show(r: Row) -> None:
            rows.append(r)
            console.print(
                f"  {r.server:<20} delay {r.delay_ms:>3g} ms  {r.connections:>6} conns  "
                f"{r.throughput:>9,.0f} req/s  p99 {r.latency('p99') or 0:>8.1f} ms"
            )

        def failed(connections: int, exc: RuntimeError, name: str = variant.name) -> None:
            console.print(f"  {name:<20} {connections:>6} conns  [red]client failed: {exc}[/red]")

        measure(variant, levels, delay, args.duration, args.warmup, on_level=show, on_error=failed)

    console.print(
        rich_table("echolab bench (closed loop; bound = connections / delay)", rows, delay_column=True)
    )
    for name, a, b, connections, delay, target in PAIRS:
        if args.only and args.only not in a.name:
            continue
        pair = {**paired(name, a, b, connections, delay, args), "target": target}
        console.print(
            f"{name}: median ratio {pair['median_ratio']:.2f} "
            + ", ".join(f"{k} {v}" for k, v in pair["throughputs"].items())
        )
        pairs.append(pair)
    locust_rate = locust_capacity(args.duration * 2)
    console.print(
        f"one Locust process (50 AsyncUser, lines, async server at delay 0): {locust_rate:,.0f} req/s"
    )
    record["locust_requests_per_second"] = locust_rate
