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

from ..load.bench_result import UNMEASURED, shown

CONSOLE_WIDTH = 150  # the widest table: the suite's, with its delay column
HOLD_FRACTION = 0.9  # "holds" = at least 90% of the Little's-law bound (open loop: of the offered rate)...
HOLD_ERROR_RATE = 0.01  # ...with under 1% of requests failing...
# ...and, in an open loop, where a server can keep the rate while a queue grows,
# with the p99 (from the intended send time) within this many times the work.
HOLD_P99_FACTOR = 2.0
MOSTLY = 0.5  # a level where more than this share of its requests failed or went unanswered says so


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
    python: str = ""  # the server's interpreter: 3.13.0, 3.14.0t ("" in results from before)
    gil: str = ""  # on | off, at run time
    loop: str = ""  # uvloop | asyncio | none (threads)
    unsent: int = 0  # open loop: requests due but never sent, for want of a free connection
    # Why the level was not measured: the server could not start, died mid-level or the
    # client failed (one line). Such a row's figures are not the server's: they show as UNMEASURED.
    failure: str | None = None
    # The most calls at once the server's dependency saw (queries running in PostgreSQL, calls in
    # progress at the downstream): what its pools let through. None: its IO is a timer.
    dependency_peak: int | None = None

    @classmethod
    def failed(cls, failure: str, **what: Any) -> Row:
        """A level that was not measured, and why: ``what`` says which (server, connections...)."""
        return cls(
            connected=0, seconds=0.0, requests=0, throughput=0.0, latency_ms={}, failure=failure, **what
        )

    @property
    def interpreter(self) -> str:
        """``3.13.0, GIL on``: the server's Python as tables and headers show it ("" if not recorded)."""
        return f"{self.python}, GIL {self.gil}" if self.python else ""

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
    def due(self) -> int:
        """The requests the level asked for that can be counted: open loop, the offered rate over
        the window; closed loop, those answered or failed (one at a time per connection)."""
        if self.mode == "open":
            return round(self.rate * self.seconds)
        return self.requests + self.error_count

    @property
    def mostly_failed(self) -> str | None:
        """ "most requests failed or went unanswered (N of M)" when they did; None otherwise."""
        lost = self.due - self.requests
        if self.failure or lost <= MOSTLY * max(self.due, 1):
            return None
        what = "failed or went unanswered" if self.mode == "open" else "failed"
        return f"most requests {what} ({lost:,} of {self.due:,})"

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
        if self.failure:
            return self.failure
        if self.mostly_failed:
            return self.mostly_failed
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
            return f"its p99 reaches {shown(p99, ',.0f')} ms, {over} ({fraction:.0%} {of})"
        return None

    @property
    def holds(self) -> bool:
        return self.trouble is None

    def latency(self, key: str) -> float | None:
        return self.latency_ms.get(key)


def measured(rows: list[Row]) -> list[Row]:
    """The rows that hold figures: not the levels that failed."""
    return [r for r in rows if not r.failure]


def errors_cell(row: Row) -> str:
    """The failed requests, and the open loop's unanswered ones when they were most."""
    lost = row.due - row.requests - row.error_count
    cells = [f"{row.error_count:,}"] if row.error_count else []
    if row.mode == "open" and row.mostly_failed and lost > 0:
        cells.append(f"{lost:,} unanswered")
    return ", ".join(cells)


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[Row], str]
    left: bool = False
    wide: bool = False  # only where there is room: the HTML report
    mode: str | None = None  # only in tables of this mode's rows
    figure: bool = True  # a measured figure: UNMEASURED in a row that failed
    only_if: Callable[[Row], bool] | None = None  # only in tables with a row where this holds
    varies: bool = False  # only in tables whose rows differ in it

    def text(self, row: Row) -> str:
        return UNMEASURED if self.figure and row.failure else self.cell(row)


COLUMNS: tuple[Column, ...] = (
    Column("server", lambda r: r.server, left=True, figure=False),
    Column("framing", lambda r: r.framing, left=True, figure=False),
    Column("python", lambda r: r.interpreter, left=True, figure=False, varies=True),
    Column("offered req/s", lambda r: f"{r.rate:,.0f}", mode="open", figure=False),
    Column("conns", lambda r: f"{r.connections:,}", figure=False),
    Column("req/s", lambda r: f"{r.throughput:,.0f}"),
    Column("of bound", lambda r: shown(r.bound_fraction, ".1%"), mode="closed"),
    Column("of offered", lambda r: shown(r.bound_fraction, ".1%"), mode="open"),
    Column("p50 ms", lambda r: shown(r.latency("p50"))),
    Column("p90 ms", lambda r: shown(r.latency("p90")), wide=True),
    Column("p99 ms", lambda r: shown(r.latency("p99"))),
    Column("p99.9 ms", lambda r: shown(r.latency("p99.9")), wide=True),
    Column(
        "at once",
        lambda r: shown(r.dependency_peak, ","),
        only_if=lambda r: r.dependency_peak is not None,
    ),
    Column("errors", errors_cell),
    Column("server CPU", lambda r: f"{r.server_cpu_percent:.0f}%"),
    Column("RSS MiB", lambda r: f"{r.server_rss_mb:.0f}"),
    Column("threads", lambda r: str(r.server_threads)),
    Column("client CPU", lambda r: f"{r.client_cpu_percent:.0f}%", wide=True),
    Column("failed", lambda r: r.failure or "", left=True, figure=False, only_if=lambda r: bool(r.failure)),
)


def columns(rows: list[Row], wide: bool = False) -> list[Column]:
    """The columns for a table of ``rows``: the modes present, the wide ones only if asked, the
    conditional ones where a row needs them."""
    modes = {r.mode for r in rows}
    return [
        c
        for c in COLUMNS
        if (wide or not c.wide)
        and (c.mode is None or c.mode in modes)
        and (c.only_if is None or any(c.only_if(r) for r in rows))
        and (not c.varies or len({c.cell(r) for r in rows}) > 1)
    ]


def interpreters(rows: list[Row]) -> str:
    """The servers' interpreters, for a run's header: ``Python 3.11.7, GIL on; 3.14.0t, GIL off``."""
    seen = dict.fromkeys(r.interpreter for r in rows if r.python)
    return f"servers on Python {'; '.join(seen)}" if seen else "servers' Python not recorded"


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
    chosen = columns(rows)
    for column in chosen:
        table.add_column(column.title, justify="left" if column.left else "right")
    for row in rows:
        cells = [column.text(row) for column in chosen]
        if delay_column:
            cells.insert(0, f"{row.delay_ms:g} ms")
        red = row.failure or row.mostly_failed or (not row.holds and row.bound_fraction is not None)
        table.add_row(*cells, style="red" if red else None)
    return table
