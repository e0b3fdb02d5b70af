"""``echolab compare RUN_A RUN_B``: two runs in one report, and B/A ratios in the terminal.

Measurements are matched on what was measured (scenario, loop, server,
level, time per request); the machine facts of both runs are shown side by
side, since a ratio across machines or commits is a different experiment.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path
from typing import Any

from ..load.bench_result import shown
from ..settings import CompareSettings
from . import charts
from .history import NotARun, SavedRun, load, new_folder
from .report import level_text, page, require_extra
from .results import Row, by_server, console, interpreters, measured

Key = tuple[str, str, str, float, float]  # scenario, mode, server, level, delay ms
Group = tuple[str, str, float]  # scenario, mode, delay ms


def key(row: Row) -> Key:
    return (row.scenario, row.mode, row.server, row.level, row.delay_ms)


def group_title(group: Group) -> str:
    scenario, mode, delay = group
    name = scenario or f"time per request {delay:g} ms"
    return f"{name} ({'open' if mode == 'open' else 'closed'} loop)"


def matched(a: SavedRun, b: SavedRun) -> list[tuple[Row, Row]]:
    """(A's row, B's row) for every measurement both runs made, in A's order."""
    b_rows = {key(r): r for r in b.rows}
    return [(r, b_rows[key(r)]) for r in a.rows if key(r) in b_rows]


def ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None else None


def figures(row: Row) -> tuple[float | None, float | None]:
    """A row's throughput and p99, each None where it was not measured (a level that failed)."""
    if row.failure:
        return None, None
    return row.throughput, row.latency("p99")


def show_ratio(value: float | None) -> str:
    return shown(value, ".2f") + ("x" if value is not None else "")


def cells(a: Row, b: Row) -> list[str]:
    """A's and B's throughput and their ratio, then their p99 and its ratio; UNMEASURED for what was not."""
    (a_rate, a_p99), (b_rate, b_p99) = figures(a), figures(b)
    return [
        shown(a_rate, ",.0f"), shown(b_rate, ",.0f"), show_ratio(ratio(a_rate, b_rate)),
        shown(a_p99), shown(b_p99), show_ratio(ratio(a_p99, b_p99)),
    ]  # fmt: skip


def terminal_table(pairs: list[tuple[Row, Row]]) -> Any:
    from rich.table import Table

    table = Table(title="B compared with A (B/A: above 1 is more throughput, or more latency)")
    for title in (
        "section",
        "server",
        "level",
        "A req/s",
        "B req/s",
        "B/A",
        "A p99 ms",
        "B p99 ms",
        "B/A p99",
    ):
        table.add_column(title, justify="left" if title in ("section", "server", "level") else "right")
    for a, b in pairs:
        table.add_row(group_title((a.scenario, a.mode, a.delay_ms)), a.server, level_text(a), *cells(a, b))
    return table


def machine_table(a: SavedRun, b: SavedRun) -> str:
    """The two runs' machine facts side by side; the ones that differ in bold."""
    left_facts = {**a.machine, "servers": interpreters(a.rows)}
    right_facts = {**b.machine, "servers": interpreters(b.rows)}
    rows = []
    for fact in sorted(set(left_facts) | set(right_facts)):
        left, right = left_facts.get(fact), right_facts.get(fact)
        mark = ' style="font-weight:bold"' if left != right else ""
        rows.append(
            f'<tr{mark}><td class="l">{html.escape(fact)}</td><td class="l">{html.escape(str(left))}</td>'
            f'<td class="l">{html.escape(str(right))}</td></tr>'
        )
    return (
        "<table><thead><tr><th>machine</th><th>A</th><th>B</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def ratio_table(pairs: list[tuple[Row, Row]]) -> str:
    head = "".join(
        f"<th>{t}</th>"
        for t in ("server", "level", "A req/s", "B req/s", "B/A", "A p99 ms", "B p99 ms", "B/A p99")
    )
    body = "".join(
        f'<tr><td class="l">{html.escape(a.server)}</td><td class="l">{html.escape(level_text(a))}</td>'
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells(a, b))
        + "</tr>"
        for a, b in pairs
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(group: Group, pairs: list[tuple[Row, Row]], index: int) -> str:
    a_rows = measured([a for a, _ in pairs])
    b_rows = measured([b for _, b in pairs])
    series = charts.series_of(by_server(a_rows), " (A)") + charts.series_of(
        by_server(b_rows), " (B)", dashed=True
    )
    _, mode, delay = group
    figures = charts.bound_chart(series, mode, delay) + charts.latency_chart(series, mode, delay)
    return (
        f'<section id="s{index}"><h2>{html.escape(group_title(group))}</h2>'
        "<p class='meta'>A solid, B dashed; each server in its own colour.</p>"
        f"{figures}{ratio_table(pairs)}</section>"
    )


def write(out: Path, a: SavedRun, b: SavedRun, pairs: list[tuple[Row, Row]]) -> Path:
    groups: dict[Group, list[tuple[Row, Row]]] = {}
    for pair in pairs:
        groups.setdefault((pair[0].scenario, pair[0].mode, pair[0].delay_ms), []).append(pair)
    head = (
        "<h1>echolab: two runs compared</h1>"
        f"<p>A: <code>{html.escape(str(a.path))}</code> ({html.escape(a.label)})<br>"
        f"B: <code>{html.escape(str(b.path))}</code> ({html.escape(b.label)})</p>"
        + (
            '<p class="partial">A partial run is compared: only the measurements both runs made appear.</p>'
            if a.partial or b.partial
            else ""
        )
        + machine_table(a, b)
    )
    body = [section(g, p, i) for i, (g, p) in enumerate(groups.items())]
    contents = [(f"s{i}", group_title(g)) for i, g in enumerate(groups)]
    index = new_folder(out, "compare") / "index.html"
    index.write_text(page("echolab compare", head, body, contents, ""))
    return index


def run(run_a: str, run_b: str, settings: CompareSettings) -> int:
    require_extra()
    try:
        a, b = load(Path(run_a)), load(Path(run_b))
    except NotARun as exc:
        print(f"echolab compare: error: {exc}", file=sys.stderr)
        return 2
    pairs = matched(a, b)
    if not pairs:
        print(
            "echolab compare: the two runs share no measurement (the same scenario, server and level)",
            file=sys.stderr,
        )
        return 1
    out = console()
    out.print(f"A: {a.path} ({a.label}): {a.machine_line}")
    out.print(f"B: {b.path} ({b.label}): {b.machine_line}")
    out.print(terminal_table(pairs))
    index = write(settings.out, a, b, pairs)
    out.print(f"report: {index.resolve()}")
    return 0
