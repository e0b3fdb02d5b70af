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

HOLD_FRACTION = 0.9  # "holds" = at least 90% of the Little's-law bound...
HOLD_ERROR_RATE = 0.01  # ...with under 1% of requests failing


@dataclass(frozen=True)
class Row:
    server: str  # the variant's name, as tables and charts show it
    framing: str
    connections: int
    connected: int
    delay_ms: float
    seconds: float
    requests: int
    throughput: float
    latency_ms: dict[str, float | None]
    errors: dict[str, int] = field(default_factory=dict)
    bound: float | None = None
    bound_fraction: float | None = None
    server_cpu_percent: float = 0.0
    server_rss_mb: float = 0.0
    server_threads: int = 0

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
        return fraction >= HOLD_FRACTION and self.error_count <= HOLD_ERROR_RATE * max(self.requests, 1)

    def latency(self, key: str) -> float | None:
        return self.latency_ms.get(key)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[Row], str]
    left: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("server", lambda r: r.server, left=True),
    Column("framing", lambda r: r.framing, left=True),
    Column("conns", lambda r: f"{r.connections:,}"),
    Column("req/s", lambda r: f"{r.throughput:,.0f}"),
    Column("of bound", lambda r: "-" if r.bound_fraction is None else f"{r.bound_fraction:.1%}"),
    Column("p50 ms", lambda r: _ms(r.latency("p50"))),
    Column("p99 ms", lambda r: _ms(r.latency("p99"))),
    Column("errors", lambda r: f"{r.error_count:,}" if r.error_count else ""),
    Column("server CPU", lambda r: f"{r.server_cpu_percent:.0f}%"),
    Column("RSS MiB", lambda r: f"{r.server_rss_mb:.0f}"),
    Column("threads", lambda r: str(r.server_threads)),
)


def by_server(rows: list[Row]) -> dict[str, list[Row]]:
    """The rows of each server, in the order servers first appear, each sorted by level."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.server, []).append(row)
    for series in grouped.values():
        series.sort(key=lambda r: r.connections)
    return grouped


def rich_table(title: str, rows: list[Row], delay_column: bool = False) -> Any:
    """The rows as a rich Table; red where a server did not hold."""
    from rich.table import Table

    table = Table(title=title)
    if delay_column:
        table.add_column("delay", justify="right")
    for column in COLUMNS:
        table.add_column(column.title, justify="left" if column.left else "right")
    for row in rows:
        cells = [column.cell(row) for column in COLUMNS]
        if delay_column:
            cells.insert(0, f"{row.delay_ms:g} ms")
        table.add_row(*cells, style=None if row.holds or row.bound_fraction is None else "red")
    return table
