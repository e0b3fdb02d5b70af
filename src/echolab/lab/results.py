"""One measurement of one server at one level, typed, and the one way to show it.

The benchmark's table, the demo's table and the HTML report all render
:class:`Row` through :data:`COLUMNS`, and read it back from results JSON
with :meth:`Row.from_dict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

HOLD_FRACTION = 0.9  # "holds" = at least 90% of the Little's-law bound (open loop: of the offered rate)...
HOLD_ERROR_RATE = 0.01  # ...with under 1% of requests failing...
# ...and, in an open loop, where a server can keep the rate while a queue grows,
# with the p99 (from the intended send time) within this many times the work.
HOLD_P99_FACTOR = 2.0


@dataclass(frozen=True)
class Row:
    server: str  # the variant's name, as tables and charts show it
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
    scenario: str = ""  # the demo's workload (lab/scenarios.py); "" in the benchmark
    mode: str = "closed"  # closed | open
    rate: float = 0.0  # open loop: offered requests/s
    histogram_ms: list[tuple[float, int]] = field(default_factory=list)
    connect_errors: dict[str, int] = field(default_factory=dict)
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

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
    def holds(self) -> bool:
        fraction = self.bound_fraction or 0.0
        if fraction < HOLD_FRACTION or self.error_count > HOLD_ERROR_RATE * max(self.requests, 1):
            return False
        p99 = self.latency("p99")
        return (
            self.mode != "open"
            or self.delay_ms <= 0
            or (p99 is not None and p99 <= HOLD_P99_FACTOR * self.delay_ms)
        )

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
    Column("errors", lambda r: f"{r.error_count:,}" if r.error_count else ""),
    Column("server CPU", lambda r: f"{r.server_cpu_percent:.0f}%"),
    Column("RSS MiB", lambda r: f"{r.server_rss_mb:.0f}"),
    Column("threads", lambda r: str(r.server_threads)),
)


def columns(rows: list[Row], wide: bool = False) -> list[Column]:
    """The columns for a table of ``rows``: the modes present, the wide ones only if asked."""
    modes = {r.mode for r in rows}
    return [c for c in COLUMNS if (wide or not c.wide) and (c.mode is None or c.mode in modes)]


def by_server(rows: list[Row]) -> dict[str, list[Row]]:
    """The rows of each server, in the order servers first appear, each sorted by level."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.server, []).append(row)
    for series in grouped.values():
        series.sort(key=lambda r: r.level)
    return grouped


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
