"""One measurement of one server at one level, typed, and the one way to show it.

The benchmark's table, the demo's table and the HTML report all render
:class:`Row` through :data:`COLUMNS`, and read it back from results JSON
with :meth:`Row.from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CONSOLE_WIDTH = 150  # the widest table: the suite's, with its delay column
HOLD_FRACTION = 0.9  # "holds" = at least 90% of the Little's-law bound (open loop: of the offered rate)...
HOLD_ERROR_RATE = 0.01  # ...with under 1% of requests failing...
# ...and, in an open loop, where a server can keep the rate while a queue grows,
# with the p99 (from the intended send time) within this many times the work.
HOLD_P99_FACTOR = 2.0


@dataclass(frozen=True)
class Row:
    server: str  # the contender's name, as tables and charts show it
    framing: str
    connections: int
    connected: int
    delay_ms: float  # the Little's-law bound's D: the time one request takes on an idle server
    seconds: float
    requests: int
    throughput: float  # completed requests/s
    latency_ms: dict[str, float | None]
    errors: dict[str, int] = field(default_factory=dict)
    bound: float | None = None  # closed loop: connections / delay; open loop: the offered rate
    bound_fraction: float | None = None
    server_cpu_percent: float = 0.0
    server_rss_mb: float = 0.0
    server_threads: int = 0
    client_cpu_percent: float = 0.0
    scenario: str = ""  # the demo's workload (scenarios.py); "" in the benchmark
    mode: str = "closed"  # closed | open
    rate: float = 0.0  # open loop: offered requests/s
    histogram_ms: list[tuple[float, int]] = field(default_factory=list)
    connect_errors: dict[str, int] = field(default_factory=dict)
    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    # The most calls at once the server's dependency saw (queries running in PostgreSQL, calls in
    # progress at the downstream): what its pools let through. None: its IO is a timer.
    dependency_peak: int | None = None

    @property
    def level(self) -> float:
        """What the sweep raised: connections (closed loop) or the offered rate (open loop)."""
        return self.rate if self.mode == "open" else self.connections

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        """A row from results JSON (``echolab bench --json`` plus the sweep's fields); extra keys ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def slack(self) -> float:
        """How far under the bound a closed loop that keeps up may measure, counting whole requests.

        In a window of T seconds a connection completes T/D requests, give
        or take one; over N connections with independent phases, give or
        take about the square root of N. At 1 connection, 1 s and 100 ms
        that is a tenth of the bound: counting 9 replies instead of 10 is
        not a server that fails to keep up.
        """
        if self.mode == "open" or self.delay_ms <= 0 or self.seconds <= 0:
            return 0.0
        return self.delay_ms / 1000 / (self.seconds * math.sqrt(max(self.connections, 1)))

    @property
    def trouble(self) -> str | None:
        """Why the server does not hold this level (None: it holds), in words."""
        fraction = self.bound_fraction or 0.0
        of = "of the offered rate" if self.mode == "open" else "of the bound"
        if fraction + self.slack < HOLD_FRACTION:
            return f"it gives {fraction:.0%} {of} ({self.throughput:,.0f} req/s)"
        if self.error_count > HOLD_ERROR_RATE * max(self.requests, 1):
            return f"{self.error_count:,} requests fail ({fraction:.0%} {of})"
        p99 = self.latency("p99")
        if (
            self.mode == "open"
            and self.delay_ms > 0
            and (p99 is None or p99 > HOLD_P99_FACTOR * self.delay_ms)
        ):
            over = f"over {HOLD_P99_FACTOR:g} times the work"
            return f"its p99 reaches {p99 or 0:,.0f} ms, {over} ({fraction:.0%} {of})"
        return None

    @property
    def holds(self) -> bool:
        return self.trouble is None

    def latency(self, key: str) -> float | None:
        return self.latency_ms.get(key)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[Row], str]
    left: bool = False
    wide: bool = False  # only where there is room: the HTML report
    mode: str | None = None  # only in tables of this mode's rows
    dependency: bool = False  # only in tables of rows whose IO is a dependency


COLUMNS: tuple[Column, ...] = (
    Column("server", lambda r: r.server, left=True),
    Column("framing", lambda r: r.framing, left=True),
    Column("offered req/s", lambda r: f"{r.rate:,.0f}", mode="open"),
    Column("conns", lambda r: f"{r.connections:,}"),
    Column("req/s", lambda r: f"{r.throughput:,.0f}"),
    Column(
        "of bound", lambda r: "-" if r.bound_fraction is None else f"{r.bound_fraction:.1%}", mode="closed"
    ),
    Column(
        "of offered", lambda r: "-" if r.bound_fraction is None else f"{r.bound_fraction:.1%}", mode="open"
    ),
    Column("p50 ms", lambda r: _ms(r.latency("p50"))),
    Column("p90 ms", lambda r: _ms(r.latency("p90")), wide=True),
    Column("p99 ms", lambda r: _ms(r.latency("p99"))),
    Column("p99.9 ms", lambda r: _ms(r.latency("p99.9")), wide=True),
    Column(
        "at once",
        lambda r: f"{r.dependency_peak:,}" if r.dependency_peak is not None else "-",
        dependency=True,
    ),
    Column("errors", lambda r: f"{r.error_count:,}" if r.error_count else ""),
    Column("server CPU", lambda r: f"{r.server_cpu_percent:.0f}%"),
    Column("RSS MiB", lambda r: f"{r.server_rss_mb:.0f}"),
    Column("threads", lambda r: str(r.server_threads)),
    Column("client CPU", lambda r: f"{r.client_cpu_percent:.0f}%", wide=True),
)


def columns(rows: list[Row], wide: bool = False) -> list[Column]:
    """The columns for a table of ``rows``: the modes present, the wide ones only if asked."""
    modes = {r.mode for r in rows}
    dependency = any(r.dependency_peak is not None for r in rows)
    return [
        c
        for c in COLUMNS
        if (wide or not c.wide) and (c.mode is None or c.mode in modes) and (dependency or not c.dependency)
    ]


def by_server(rows: list[Row]) -> dict[str, list[Row]]:
    """The rows of each server, in the order servers first appear, each sorted by level."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.server, []).append(row)
    for series in grouped.values():
        series.sort(key=lambda r: r.level)
    return grouped


def console() -> Any:
    """The lab's rich Console: the terminal's width, or into a file or a pipe wide enough for the tables."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else CONSOLE_WIDTH)


def rich_table(title: str, rows: list[Row], delay_column: bool = False) -> Any:
    """The rows as a rich Table; red where a server did not hold."""
    from rich.table import Table

    table = Table(title=title)
    if delay_column:
        table.add_column("delay", justify="right")
    shown = columns(rows)
    for column in shown:
        table.add_column(column.title, justify="left" if column.left else "right")
    for row in rows:
        cells = [column.cell(row) for column in shown]
        if delay_column:
            cells.insert(0, f"{row.delay_ms:g} ms")
        table.add_row(*cells, style=None if row.holds or row.bound_fraction is None else "red")
    return table
