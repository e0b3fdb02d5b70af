"""``make bench``: every server, the levels where they differ, one run, one table.

Run on a quiet machine; compare the rows of one run with each other (ratios),
not with another machine's figures. Writes reports/bench-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .report import require_extra
from .sweep import ServerSpec, measure, running

require_extra()
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ASYNC = ServerSpec("async", "async")
ASYNC_NO_METRICS = ServerSpec("async (no metrics)", "async", options=("--no-metrics",))
BARE = ServerSpec("bare uvloop", "bare-uvloop")
BARE_THREADED = ServerSpec("bare threaded", "bare-threaded")
THREADED = ServerSpec("threaded", "threaded", options=("--model", "thread-per-connection"))
POOL = ServerSpec("pool (64 threads)", "threaded", options=("--model", "pool", "--threads", "64"))
# Serial and persistent connections would serve one client forever: the
# article's baseline speaks its own protocol, one request per connection.
SERIAL = ServerSpec("serial", "threaded", framing="oneshot", options=("--model", "serial"))

THREADED_HTTP = ServerSpec("threaded-http", "threaded-http", "http")
ASYNC_HTTP = ServerSpec("async-http", "async-http", "http")

LEVELS = (100, 1000, 5000, 10000)


def plan() -> list[tuple[str, ServerSpec, tuple[int, ...], float]]:
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


def targets(rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The issue's targets for the async server, checked against this run."""

    def row(server: str, delay: float, connections: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if r["server"] == server and r["delay_ms"] == delay and r["connections"] == connections
            ),
            None,
        )

    checks = []
    for level in (1000, 5000):
        r = row("async", 100, level)
        if r and r["bound_fraction"] is not None:
            checks.append(
                (
                    f"async >= 95% of the bound at {level}",
                    r["bound_fraction"] >= 0.95,
                    f"{r['bound_fraction']:.1%}",
                )
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
)


def paired(
    name: str, a: ServerSpec, b: ServerSpec, connections: int, delay: float, args: argparse.Namespace
) -> dict[str, Any]:
    throughputs: dict[str, list[float]] = {a.name: [], b.name: []}
    for _ in range(ROUNDS):
        for spec in (a, b):
            (row,) = measure(spec, [connections], delay, args.duration, args.warmup)
            throughputs[spec.name].append(row["throughput"])
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
    """Requests/s one Locust process generates with our TCP user (see locust_capacity.py)."""
    from .locust_capacity import measure_capacity

    with running(ASYNC, delay_ms=0) as (port, _):
        return measure_capacity("127.0.0.1", port, seconds=seconds)


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="echolab bench (closed loop; bound = connections / delay)")
    for column in (
        "delay",
        "server",
        "framing",
        "conns",
        "req/s",
        "of bound",
        "p50 ms",
        "p99 ms",
        "errors",
        "srv CPU",
        "RSS MB",
        "threads",
    ):
        out.add_column(column, justify="right" if column not in ("server", "framing") else "left")
    for r in rows:
        fraction = f"{r['bound_fraction']:.1%}" if r["bound_fraction"] is not None else "-"
        errors = sum(r["errors"].values())
        out.add_row(
            f"{r['delay_ms']:g} ms",
            r["server"],
            r["framing"],
            str(r["connections"]),
            f"{r['throughput']:,.0f}",
            fraction,
            f"{r['latency_ms']['p50']:.1f}",
            f"{r['latency_ms']['p99']:.1f}",
            str(errors) if errors else "",
            f"{r['server_cpu_percent']:.0f}%",
            f"{r['server_rss_mb']:.0f}",
            str(r["server_threads"]),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echolab.benchmark", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for the JSON")
    parser.add_argument("--only", default="", help="run only servers whose name contains this")
    args = parser.parse_args(argv)

    # Wide enough for the table when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 150)
    rows: list[dict[str, Any]] = []
    for _section, spec, levels, delay in plan():
        if args.only and args.only not in spec.name:
            continue

        def show(r: dict[str, Any]) -> None:
            console.print(
                f"  {r['server']:<20} delay {r['delay_ms']:>3g} ms  {r['connections']:>6} conns  "
                f"{r['throughput']:>9,.0f} req/s  p99 {r['latency_ms']['p99']:>8.1f} ms"
            )

        def failed(connections: int, exc: RuntimeError, name: str = spec.name) -> None:
            console.print(f"  {name:<20} {connections:>6} conns  [red]client failed: {exc}[/red]")

        rows += measure(spec, levels, delay, args.duration, args.warmup, on_level=show, on_error=failed)

    console.print(table(rows))
    pairs = []
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
        f"one Locust process (50 AsyncEchoUser, lines, async server at delay 0): {locust_rate:,.0f} req/s"
    )
    checks = targets(rows, pairs)
    for name, ok, detail in checks:
        console.print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "rows": rows,
                "pairs": pairs,
                "locust_requests_per_second": locust_rate,
                "targets": [{"target": n, "met": ok, "measured": d} for n, ok, d in checks],
            },
            indent=1,
        )
    )
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
