"""What each protection costs (``make bench``): each TCP server without one protection at a time.

Each family is one of echolab's TCP servers and its bare reference
(:mod:`echolab.servers.bare`, which has no deadline, limit, metric or work
model): the server as it is, then without its deadlines, its metrics, its
work model (:mod:`echolab.servers.protections`), and without all three,
which leaves what is not a protection (a framer, a connection's
bookkeeping). Every contender runs once per round at every level, in an order
that turns each round, so that all of them meet the same noise; a ratio is
the median over rounds of the contender's figure over the bare server's in
the same round. The figures: server CPU time per request, over the
client's measured seconds (:class:`.sweep.Sampler`), and throughput.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from ..catalogue import server
from ..interpreters import Venv
from .contenders import (
    ASYNC_PROTOCOL,
    ASYNC_STREAMS,
    BARE_STREAMS,
    BARE_THREADED,
    BARE_UVLOOP,
    Contender,
    of,
    without,
)
from .results import Row
from .sweep import measure

PROTECTIONS = ("deadlines", "metrics", "work")


@dataclass(frozen=True)
class Level:
    """Where a family is measured: ``load`` connections in a closed loop, or req/s in an open one."""

    delay_ms: float
    load: int
    open_loop: bool = False

    @property
    def title(self) -> str:
        if self.open_loop:
            return f"{self.load:,} req/s, delay {self.delay_ms:g}"
        return f"{self.load:,} conns" + (f", delay {self.delay_ms:g}" if self.delay_ms != 100 else "")


# At delay 0 a request is all server cost: offered at a fixed rate every server carries, so that each
# meets the same load (in a closed loop a faster server batches more per wake-up, and pays less per
# request for it). With 100 ms of IO, the levels where the event loops run out of CPU. Threads
# collapse past 1,000 connections (make bench's sweep): at 2,000 each threaded contender gave between
# 1% and 30% of the bound from one round to the next, ratios of the scheduler's moods.
AT_REST = Level(0.0, 10_000, open_loop=True)
ASYNC_LEVELS = (AT_REST, Level(100.0, 2000), Level(100.0, 10000))
THREADED_LEVELS = (AT_REST, Level(100.0, 1000))


@dataclass(frozen=True)
class Family:
    name: str
    bare: Contender
    server: Contender
    levels: tuple[Level, ...]

    @property
    def contenders(self) -> list[Contender]:
        """The bare server, the server as it is, without each protection, without all."""
        off = [without(self.server, name) for name in PROTECTIONS]
        return [self.bare, self.server, *off, without(self.server, *PROTECTIONS)]


FAMILIES = (
    Family("streams", BARE_STREAMS, ASYNC_STREAMS, ASYNC_LEVELS),
    Family("protocol", BARE_UVLOOP, ASYNC_PROTOCOL, ASYNC_LEVELS),
    Family("threaded", BARE_THREADED, of(server("threaded")), THREADED_LEVELS),
)


@dataclass
class Cell:
    """One contender at one level over the rounds: CPU µs per request and req/s, and their ratios to bare."""

    cpu_us: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    cpu_ratio: list[float] = field(default_factory=list)
    throughput_ratio: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 3) if values else None

        return {
            "cpu_us_per_request": median(self.cpu_us),
            "throughput": median(self.throughput),
            "cpu_ratio": median(self.cpu_ratio),
            "throughput_ratio": median(self.throughput_ratio),
            "rounds": {
                "cpu_us_per_request": self.cpu_us,
                "throughput": self.throughput,
                "errors": self.errors,
                "cpu_ratio": self.cpu_ratio,
                "throughput_ratio": self.throughput_ratio,
            },
        }


def cpu_us_per_request(row: Row) -> float:
    """The server's CPU time per request answered, in µs."""
    return 10_000 * row.server_cpu_percent / row.throughput if row.throughput else 0.0


Cells = dict[tuple[str, Level], Cell]  # (contender's name, level)


def run_family(
    family: Family,
    rounds: int,
    duration: float,
    warmup: float,
    venv: Venv | None = None,
    on_round: Any = None,
) -> Cells:
    """Every contender of ``family`` at every level, ``rounds`` times, in an order that turns each round;
    under ``venv``'s interpreter if given."""
    contenders = [contender.under(venv, named=False) for contender in family.contenders]
    cells: Cells = {}
    # One server start per contender, delay and loop: the levels that share them run on it in turn.
    groups: dict[tuple[float, bool], list[Level]] = {}
    for level in family.levels:
        groups.setdefault((level.delay_ms, level.open_loop), []).append(level)
    for number in range(rounds):
        turn = number % len(contenders)
        rows: dict[tuple[str, Level], Row] = {}
        for contender in contenders[turn:] + contenders[:turn]:
            for (delay, open_loop), levels in groups.items():
                loads = [level.load for level in levels]
                measured = measure(contender, loads, delay, duration, warmup, open_loop=open_loop)
                for level, row in zip(levels, measured, strict=True):
                    rows[contender.name, level] = row
        for (name, level), row in rows.items():
            bare = rows[family.bare.name, level]
            cell = cells.setdefault((name, level), Cell())
            cell.cpu_us.append(round(cpu_us_per_request(row), 2))
            cell.throughput.append(row.throughput)
            cell.errors.append(row.error_count)
            cell.cpu_ratio.append(round(cpu_us_per_request(row) / max(cpu_us_per_request(bare), 1e-9), 3))
            cell.throughput_ratio.append(round(row.throughput / max(bare.throughput, 1e-9), 3))
        if on_round is not None:
            on_round(family, number + 1)
    return cells


def rich_table(family: Family, cells: Cells, rounds: int) -> Any:
    """One family's table: per level, CPU per request and req/s, each with its ratio to bare."""
    from rich.table import Table

    table = Table(
        title=f"what each protection costs: {family.server.name} against {family.bare.name}, "
        f"medians of {rounds} alternating rounds (x: the ratio to {family.bare.name} in each round)"
    )
    table.add_column("server", justify="left")
    for level in family.levels:
        table.add_column(f"CPU/req, {level.title}", justify="right")
        table.add_column("req/s" if level.open_loop else f"req/s, {level.title}", justify="right")
    for contender in family.contenders:
        shown = [contender.name.removeprefix(family.server.name).strip() or contender.name]
        for level in family.levels:
            cell = cells.get((contender.name, level))
            if cell is None:
                shown += ["-", "-"]
                continue
            summary = cell.summary()
            shown.append(f"{summary['cpu_us_per_request']:.1f} µs {summary['cpu_ratio']:.2f}x")
            shown.append(f"{summary['throughput']:,.0f} {summary['throughput_ratio']:.2f}x")
        table.add_row(*shown)
    return table


# The targets, checked at the levels named: CPU per request at delay 0, where a request is all
# server cost and every server meets the same load; throughput where the event loops run out of
# CPU. (family, figure, level, bound, sense)
TARGETS = (
    ("streams", "cpu_ratio", AT_REST, 1.25, "<="),
    ("streams", "throughput_ratio", Level(100.0, 2000), 0.95, ">="),
    ("streams", "throughput_ratio", Level(100.0, 10000), 0.85, ">="),
    ("protocol", "cpu_ratio", AT_REST, 1.1, "<="),
    ("protocol", "throughput_ratio", Level(100.0, 10000), 1.0, ">="),
)


def targets(results: dict[str, Cells]) -> list[tuple[str, bool, str]]:
    """Each target of :data:`TARGETS` that was measured: (what, met, the figure)."""
    checks = []
    for family in FAMILIES:
        cells = results.get(family.name, {})
        for name, what, level, bound, sense in TARGETS:
            cell = cells.get((family.server.name, level))
            if name != family.name or cell is None:
                continue
            value = cell.summary()[what]
            measured: list[float] = getattr(cell, what)
            figure = "CPU per request" if what == "cpu_ratio" else "throughput"
            checks.append(
                (
                    f"{family.server.name} {figure} {sense} {bound:g}x {family.bare.name}, {level.title}",
                    value <= bound if sense == "<=" else value >= bound,
                    f"median {value:.2f}x over {len(measured)} alternating rounds "
                    f"({min(measured):.2f}-{max(measured):.2f})",
                )
            )
    return checks
