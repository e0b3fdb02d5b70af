"""Several demo runs as one table: each server's peak and the highest level it held, as median and range.

One run is one draw of a noisy machine: the level a verdict names moves by a
step, a peak by a fifth, with the other work on the cores. What the README
quotes comes from several runs, with the load average each began at::

    python -m echolab.lab.spread reports/demo-A reports/demo-B reports/demo-C

prints a Markdown table per section (scenario and loop) of the runs, over
the measurements every run made, and exits 2 with one line for a path that
is not a demo run.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..load.bench_result import UNMEASURED
from .history import NotARun, SavedRun, load
from .report import broken_at, level_text
from .results import Row, by_server, measured


@dataclass(frozen=True)
class Draw:
    """One server's sweep in one run: its peak req/s and the highest level it held (None: none)."""

    peak: float | None
    held: Row | None


def draw(series: list[Row]) -> Draw:
    index = broken_at(series)
    rates = [r.throughput for r in measured(series)]
    return Draw(max(rates) if rates else None, series[index - 1] if index else None)


def spread(values: Sequence[float]) -> str:
    """``median (low-high)`` (an en dash between), or the one value; UNMEASURED for none."""
    if not values:
        return UNMEASURED
    median = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return f"{median:,.0f}"
    return f"{median:,.0f} ({min(values):,.0f}\N{EN DASH}{max(values):,.0f})"


def held_text(draws: Sequence[Draw]) -> str:
    """The median of the highest levels held (a run that held none counts lowest), and the range."""
    ordered = sorted(draws, key=lambda d: -1.0 if d.held is None else d.held.level)
    median, low, high = ordered[(len(ordered) - 1) // 2], ordered[0], ordered[-1]

    def level(d: Draw) -> str:
        return "none" if d.held is None else f"{d.held.level:,.0f}"

    text = "none" if median.held is None else level_text(median.held)
    return text + (f" ({level(low)}\N{EN DASH}{level(high)})" if level(low) != level(high) else "")


def table(runs: Sequence[SavedRun]) -> str:
    """A Markdown table per section, over the (section, server) pairs every run measured."""
    sections: dict[tuple[str, str], dict[str, list[Draw]]] = {}
    for run in runs:
        grouped: dict[tuple[str, str], list[Row]] = {}
        for row in run.rows:
            grouped.setdefault((row.scenario, row.mode), []).append(row)
        for key, rows in grouped.items():
            for server, series in by_server(rows).items():
                sections.setdefault(key, {}).setdefault(server, []).append(draw(series))
    loads = ", ".join(f"{(r.machine.get('load_average') or [0.0])[0]:.2f}" for r in runs)
    lines = [f"{len(runs)} runs; load average at their start: {loads}", ""]
    for (scenario, mode), servers in sections.items():
        lines += [
            f"{scenario} ({mode} loop)",
            "",
            "| server | holds up to: median (range) | peak req/s: median (range) |",
            "| --- | --- | --- |",
        ]
        for server, draws in servers.items():
            if len(draws) == len(runs):
                peaks = [d.peak for d in draws if d.peak is not None]
                lines.append(f"| {server} | {held_text(draws)} | {spread(peaks)} |")
        lines.append("")
    return "\n".join(lines)


def main(paths: Sequence[str]) -> int:
    if not paths:
        print("usage: python -m echolab.lab.spread DEMO_RUN...", file=sys.stderr)
        return 2
    try:
        runs = [load(Path(p)) for p in paths]
    except NotARun as exc:
        print(f"spread: error: {exc}", file=sys.stderr)
        return 2
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
