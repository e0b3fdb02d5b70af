"""The demo's report: a section per scenario (and the open loop), each with a finding, verdicts,
charts and a table, in one self-contained HTML file beside its raw JSON and CSV."""

from __future__ import annotations

import csv
import dataclasses
import html
import importlib.util
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..load.bench_result import shown
from ..machine import busy, summary
from ..scenarios import MAX_CONNECTIONS
from . import charts
from .contenders import ALL
from .history import SavedRun
from .results import HOLD_FRACTION, HOLD_P99_FACTOR, Row, by_server, columns, interpreters, measured

FAMILIES = {v.name: v.family for v in ALL}
CSV_FIELDS = (
    "scenario",
    "mode",
    "server",
    "framing",
    "connections",
    "rate",
    "delay_ms",
    "throughput",
    "bound",
    "bound_fraction",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p99.9_ms",
    "max_ms",
    "errors",
    "server_cpu_percent",
    "server_rss_mb",
    "server_threads",
    "client_cpu_percent",
    "problem",
    "failure",
)


def require_extra() -> None:
    """Fail at once, not after a sweep, when the ``report`` extra is missing."""
    missing = [name for name in ("rich", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: pip install 'echolab[report]' (make install does)")


@dataclass(frozen=True)
class Section:
    """One sweep of the report: a scenario, in a closed or an open loop."""

    scenario: str
    summary: str
    mode: str  # closed | open
    delay_ms: float  # the bound's D
    options: tuple[str, ...] = ()  # the servers' flags
    io: str = "timer"  # what a request's IO waits on: timer, or a dependency (postgres, http)
    # Each server's pool for the dependency: (server, the most it holds at once, in words); lab/pools.py.
    pools: tuple[tuple[str, int | None, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.scenario}-{self.mode}"

    @property
    def title(self) -> str:
        loop = "open loop, at a constant offered rate" if self.mode == "open" else "closed loop"
        return f"{self.scenario} ({loop})"

    def rows(self, rows: list[Row]) -> list[Row]:
        return [r for r in rows if r.scenario == self.scenario and r.mode == self.mode]


def plural(count: float, noun: str) -> str:
    return f"{count:,.0f} {noun}" + ("" if count == 1 else "s")


def level_text(row: Row) -> str:
    return f"{row.rate:,.0f} req/s offered" if row.mode == "open" else plural(row.connections, "connection")


def broken_at(series: list[Row]) -> int:
    """The index of the first level the server does not hold; ``len(series)`` if it holds them all."""
    return next((i for i, r in enumerate(series) if not r.holds), len(series))


def verdict(server: str, series: list[Row], cut: str | None = None) -> str:
    """One sentence: up to where the server holds, and what happens at the first level it does not;
    of the levels measured only, and ``cut``: why its sweep was cut short, if it was."""
    index = broken_at(series)
    top = series[-1]
    of = "of the offered rate" if top.mode == "open" else "of the bound"
    if index == len(series):
        every = "every level measured" if cut else "every level"
        figures = f"{shown(top.bound_fraction, '.0%')} {of}, p99 {shown(top.latency('p99'), ',.0f')} ms"
        return f"{server}: holds at {every}, up to {level_text(top)} ({figures})" + (
            f"; then {cut}." if cut else "."
        )
    first = series[index]
    if first.failure:
        where = f"holds up to {level_text(series[index - 1])}" if index else "not measured"
        return f"{server}: {where}; at {level_text(first)} it failed: {first.failure}."
    where = (
        f"holds up to {level_text(series[index - 1])}" if index else f"does not hold {HOLD_FRACTION:.0%} {of}"
    )
    p99 = "" if "p99" in (first.trouble or "") else f", p99 {shown(first.latency('p99'), ',.0f')} ms"
    return f"{server}: {where}; at {level_text(first)} {first.trouble}{p99}."


def cut_off(section: Section, skipped: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The servers of ``section`` whose sweep was cut short (a failure, a signal), and why."""
    return {s["server"]: s["why"] for s in skipped if s["section"] == section.key and s.get("cut")}


def failures_line(failures: Sequence[dict[str, Any]]) -> str:
    """Every failure of a run in one line."""
    told = [
        f"{f['server']} ({f['section']}" + (f", level {f['level']:,}" if f["level"] is not None else "")
        + f"): {f['why']}"
        for f in failures
    ]  # fmt: skip
    return f"{plural(len(told), 'failure')}: " + "; ".join(told)


def finding(section: Section, rows: list[Row], cut: dict[str, str] | None = None) -> str:
    """The section in one plain sentence, from its figures: threads against asyncio on TCP, then on
    HTTP (a protocol's servers are alike but for their model), the best server of each side.

    It speaks of the levels measured: a server ``cut`` short says so, and its peak is set against
    no other (the other side's was measured at levels it never reached)."""
    if section.io != "timer":
        return pool_finding(section, rows)
    cut = cut or {}
    best: dict[tuple[bool, str], tuple[float, str, list[Row]]] = {}  # (http, family): peak, server, series
    for name, series in by_server(rows).items():
        if not measured(series):
            continue
        key = (series[0].framing == "http", FAMILIES.get(name, "other"))
        peak = max(r.throughput for r in measured(series))
        if key not in best or peak > best[key][0]:
            best[key] = (peak, name, series)
    clauses: list[str] = []
    for http in (False, True):
        sides = {family: side for (on_http, family), side in best.items() if on_http == http}
        parts = [
            f"{name} {reach(series, cut.get(name))} ({scaling(series)})" for _, name, series in sides.values()
        ]
        whole = not any(name in cut for _, name, _ in sides.values())
        if "threaded" in sides and "async" in sides and sides["threaded"][0] and whole:
            ratio = sides["async"][0] / sides["threaded"][0]
            parts[-1] += f": the async peak is {times(ratio)} the threaded one"
        if parts:
            clauses.append(("over HTTP, " if http and clauses else "") + ", ".join(parts))
    if not clauses:
        return f"{section.summary}: nothing was measured."
    return f"{section.summary}: " + "; ".join(clauses) + "."


def reach(series: list[Row], cut: str | None = None) -> str:
    index = broken_at(series)
    if index == 0:
        return "never holds the bound"
    if index == len(series):
        if cut:
            return f"holds at every level measured, up to {level_text(series[-1])}, then {cut}"
        return f"holds at every level, up to {level_text(series[-1])}"
    failed = f", then fails at {level_text(series[index])}" if series[index].failure else ""
    return f"holds up to {level_text(series[index - 1])}{failed}"


def scaling(series: list[Row]) -> str:
    """How throughput followed the load, from the first level to the last (and the peak between),
    over the levels measured."""
    series = measured(series)
    first, last, peak = series[0], series[-1], max(series, key=lambda r: r.throughput)
    text = f"{first.throughput:,.0f} req/s at {level_text(first)}"
    if peak is not first and peak is not last:
        text += f", {peak.throughput:,.0f} at {level_text(peak)}"
    if last is not first:
        text += f", {last.throughput:,.0f} at {level_text(last)}"
    if flat(series):
        text += ", whatever the concurrency"
    return text


def flat(series: list[Row]) -> bool:
    """Ten times the load for less than twice the throughput: the model, not the load, sets the rate."""
    first, last = series[0], series[-1]
    peak = max(r.throughput for r in series)
    wide = last.connections >= 10 * first.connections
    return first.mode == "closed" and wide and peak < 2 * first.throughput


def steady(series: list[Row]) -> bool:
    """The same throughput, within 15%, from the first level to the last, ten times more connections."""
    tops = [r.throughput for r in series]
    return series[-1].connections >= 10 * series[0].connections and max(tops) <= 1.15 * min(tops)


def pools_text(section: Section) -> str:
    """Each server's pool for the section's dependency, in words; "" for a timer."""
    if not section.pools:
        return ""
    return "pools: " + "; ".join(f"{name}, {text}" for name, _, text in section.pools)


# Under this share of what its calls at once allow (calls / time per call), a server is held by the
# time its calls take through the client (its CPU, or waiting for it), not by how many its pool lets through.
SLOW_FRACTION = 0.7


def pool_finding(section: Section, rows: list[Row]) -> str:
    """A dependency's section in one sentence, at each server's top level: the servers grouped by the
    calls they made at once and what held them there (a pool, PostgreSQL's max_connections, or the
    cost of the calls themselves), with their rates."""
    noun = ("query", "queries") if section.io == "postgres" else ("call", "calls")
    pools = {name: (limit, text) for name, limit, text in section.pools}
    groups: dict[tuple[int | None, str, str], list[tuple[str, list[Row]]]] = {}
    for name, series in by_server(measured(rows)).items():  # a level that failed says nothing of a pool
        top = series[-1]
        peak = top.dependency_peak
        limit, text = pools.get(name, (None, ""))
        if peak is None:
            kind, text = "unknown", ""
        elif top.throughput < SLOW_FRACTION * peak / (section.delay_ms / 1000):
            kind, text = "slow", ""
        elif limit is None:
            kind = "unbounded"  # a pool that does not wait (requests) lets through what comes
        elif peak == limit:
            kind = "pool"
        elif section.io == "postgres" and peak >= MAX_CONNECTIONS * HOLD_FRACTION:
            kind, text = "max_connections", f"PostgreSQL's max_connections of {MAX_CONNECTIONS}"
        else:
            kind, text = "other", ""
        groups.setdefault((peak, kind, text), []).append((name, series))
    clauses = [group_clause(key, members, noun, section.delay_ms) for key, members in groups.items()]
    kinds = {kind for _, kind, _ in groups}
    tail = {
        frozenset({"pool"}): "the pool, not the model, is the limit",
        frozenset({"max_connections"}): "PostgreSQL's max_connections, not the model, is the limit",
    }.get(frozenset(kinds), "")
    return f"{section.summary}: " + "; ".join(clauses) + (f": {tail}" if tail else "") + "."


def group_clause(
    key: tuple[int | None, str, str],
    members: list[tuple[str, list[Row]]],
    noun: tuple[str, str],
    delay_ms: float,
) -> str:
    peak, kind, text = key
    calls = f"{peak or 0:,} {noun[peak != 1]}"  # noun: (singular, plural)
    names = " and ".join(name for name, _ in members)
    tops = [series[-1].throughput for _, series in members]
    if len(members) > 1 and max(tops) <= 1.15 * min(tops):
        rate = f"{'both' if len(members) == 2 else 'all'} serve {statistics.median(tops):,.0f} req/s"
    else:
        rate = ("serves " if len(members) == 1 else "serve ") + " and ".join(f"{t:,.0f}" for t in tops)
        rate += " req/s"
    steady_rate = all(steady(series) for _, series in members)
    where = " at any concurrency" if steady_rate else f" at {level_text(members[0][1][-1])}"
    failed = [f"{name} {s[-1].error_count:,}" for name, s in members if s[-1].error_count]
    errors = f" (failed requests: {', '.join(failed)})" if failed else ""
    if kind == "slow":
        cpu = ", ".join(f"{s[-1].server_cpu_percent:.0f}%" for _, s in members)
        allowed = (peak or 0) / (delay_ms / 1000)
        return (
            f"{names} {rate}{where}{errors}, under the {allowed:,.0f} that up to {calls} at once would "
            f"allow: not the pool's size but the time each call takes, {delay_ms:g} ms and more through "
            f"the client, is the limit (server CPU {cpu})"
        )
    at_once = "" if peak is None else f"with {calls} at once" + (f" ({text})" if text else "")
    return ", ".join(part for part in (at_once, f"{names} {rate}{where}") if part) + errors


def times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"1/{1 / ratio:,.0f} of" if ratio > 0 else "none of"


def csv_text(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS)
    writer.writeheader()
    for r in rows:
        flat = dataclasses.asdict(r)
        writer.writerow(
            {
                **{k: flat.get(k) for k in CSV_FIELDS},
                **{f"{k}_ms": v for k, v in r.latency_ms.items()},
                "errors": r.error_count,
            }
        )
    return buffer.getvalue()


def html_table(rows: list[Row]) -> str:
    chosen = columns(rows, wide=True)
    header = "".join(f"<th>{html.escape(c.title)}</th>" for c in chosen)
    body = []
    for r in rows:
        cls = "" if r.holds else ' class="broken"'
        cells = "".join(f"<td{' class=l' if c.left else ''}>{html.escape(c.text(r))}</td>" for c in chosen)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section_html(
    section: Section,
    rows: list[Row],
    skipped: Sequence[dict[str, Any]] = (),
    failures: Sequence[dict[str, Any]] = (),
) -> str:
    ordered = sorted(rows, key=lambda r: (r.level, r.server))
    grouped = by_server(rows)
    cut = cut_off(section, skipped)
    verdicts = "".join(
        f"<li>{html.escape(verdict(name, s, cut.get(name)))}</li>" for name, s in grouped.items()
    )
    drawn = {name: measured(series) for name, series in grouped.items() if measured(series)}
    figures = "".join(
        f"<h3>{html.escape(title)}</h3>{svg}"
        for title, svg in (
            charts.section_charts(charts.series_of(drawn), section.mode, section.delay_ms) if drawn else ()
        )
    )
    problems = sorted({f"{r.server} at {level_text(r)}: {r.problem}" for r in rows if r.problem})
    problems += [
        f"{f['server']}: {f['why']}" for f in failures if f["section"] == section.key and f["level"] is None
    ]
    unit = "req/s offered" if section.mode == "open" else "connections"
    problems += [
        f"{s['server']}: {s['why']}; not measured: {', '.join(f'{n:,}' for n in s['levels'])} {unit}"
        for s in skipped
        if s["section"] == section.key
    ]
    notes = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    flags = " ".join(section.options)
    return f"""
<section id="{html.escape(section.key)}">
<h2>{html.escape(section.title)}</h2>
<p class="meta">servers run with <code>{html.escape(flags)}</code>; the bound's time per request
{section.delay_ms:g} ms</p>
{pools_html(section)}
<p class="finding">{html.escape(finding(section, rows, cut))}</p>
<ul class="verdict">{verdicts}</ul>
{f'<p>Notes:</p><ul class="notes">{notes}</ul>' if notes else ""}
{figures}
<h3>Measurements</h3>{html_table(ordered)}
</section>"""


def pools_html(section: Section) -> str:
    if not section.pools:
        return ""
    return (
        f'<p class="meta">{html.escape(pools_text(section))}. gunicorn\'s workers are processes, each '
        "with a pool of its own. <em>at once</em>: the most "
        f"{'queries PostgreSQL ran' if section.io == 'postgres' else 'calls the downstream served'} "
        "at once during the level, counted there.</p>"
    )


def history_html(runs: Sequence[SavedRun], here: Path) -> str:
    if not runs:
        return "<p>No earlier runs in this folder.</p>"
    items = []
    for run in runs:
        link = run.path / "index.html" if run.kind == "demo" else run.path
        href = Path("..") / link.relative_to(here.parent) if link.is_relative_to(here.parent) else link
        partial = " <strong>(partial)</strong>" if run.partial else ""
        name = f'<a href="{html.escape(str(href))}">{html.escape(run.path.name)}</a>{partial}'
        cells = (name, html.escape(run.kind), html.escape(run.machine_line))
        items.append("<tr>" + "".join(f'<td class="l">{cell}</td>' for cell in cells) + "</tr>")
    example = f"echolab compare {runs[0].path} {here}"
    return (
        "<table><thead><tr><th>run</th><th>kind</th><th>machine</th></tr></thead><tbody>"
        + "".join(items)
        + f"</tbody></table><p>Compare two of them: <code>{html.escape(example)}</code></p>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1150px; color: #222;
       padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
h2 { border-top: 2px solid #ddd; padding-top: 1rem; margin-top: 2.5rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f4f4f4; } td.l { text-align: left; }
tr.broken td { background: #fff1f0; }
.finding { font-size: 1.05rem; background: #f6f8fa; border-left: 4px solid #1f77b4; padding: 0.6rem 0.8rem; }
.partial { background: #fff4d6; border: 1px solid #e0b000; padding: 0.6rem 0.8rem; }
.verdict li { margin: 0.3rem 0; } svg { max-width: 100%; height: auto; }
"""


def page(
    title: str, head: str, sections: Sequence[str], contents: Sequence[tuple[str, str]], tail: str
) -> str:
    toc = " &middot; ".join(f'<a href="#{html.escape(k)}">{html.escape(t)}</a>' for k, t in contents)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{head}\n<p>{toc}</p>\n"
        + "\n".join(sections)
        + f"\n{tail}\n</body></html>\n"
    )


def stop_text(stop_below: float) -> str:
    if not stop_below:
        return ""
    return f"A server's sweep stops at the first level where it gives under {stop_below:.0%} of the bound."


def partial_banner(partial: dict[str, Any] | None) -> str:
    if not partial:
        return ""
    return (
        f'<p class="partial"><strong>Partial run</strong>: interrupted by {html.escape(partial["signal"])} '
        f"after {partial['levels_done']} of {partial['levels_planned']} measurements; "
        "every figure below was measured, the rest were not.</p>"
    )


def warning_banners(record: dict[str, Any]) -> str:
    """What the reader must know before the figures: failures, a busy machine, scenarios left out."""
    told = []
    if record.get("failures"):
        told.append(f"<strong>Failed</strong>: {html.escape(failures_line(record['failures']))}")
    loaded = busy(record.get("machine", {}))
    if loaded:
        told.append(f"<strong>Busy machine</strong>: {html.escape(loaded)}")
    if record.get("left_out"):
        told.append(f"<strong>Left out</strong>: {html.escape(record['left_out']['why'])}")
    return "".join(f'<p class="partial">{text}</p>' for text in told)


def write(
    folder: Path,
    rows: list[Row],
    record: dict[str, Any],
    sections: Sequence[Section],
    earlier: Sequence[SavedRun] = (),
) -> Path:
    """results.json, results.csv and index.html in ``folder``; the path of index.html."""
    folder.mkdir(parents=True, exist_ok=True)
    present = [s for s in sections if s.rows(rows)]
    skipped = record.get("skipped", ())
    data = {
        **record,
        "sections": [dataclasses.asdict(s) for s in sections],
        "findings": {s.key: finding(s, s.rows(rows), cut_off(s, skipped)) for s in present},
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    (folder / "results.json").write_text(json.dumps(data, indent=1, allow_nan=False))
    (folder / "results.csv").write_text(csv_text(rows))
    settings = record["settings"]
    machine_line = f"{summary(record.get('machine', {}))}; {interpreters(rows)}"
    head = f"""<h1>Threads or asyncio: where does each one break?</h1>
<p class="meta">{html.escape(record["started"])} &middot; {html.escape(machine_line)}</p>
{partial_banner(record.get("partial"))}{warning_banners(record)}
<p class="meta">TCP servers in {html.escape(settings["framing"])} framing (the serial baseline in oneshot,
the HTTP pair over HTTP/1.1 keep-alive), {settings["duration"]:g} s per level after
{settings["warmup"]:g} s of warm-up, every server natively on loopback, one at a time, the load client on
the same machine. A server <em>holds</em> a level when it gives at least {HOLD_FRACTION:.0%} of the bound
(closed loop: connections / time per request, Little's law; open loop: the offered rate), give or take
one reply per connection counted in the window, with under 1% errors, and in the open loop a p99 within
{HOLD_P99_FACTOR:g} times the time per request; rows in red do not.
{stop_text(settings.get("stop_below", 0))}</p>"""
    tail = (
        f'<h2 id="history">Earlier runs</h2>{history_html(earlier, folder)}'
        '<p class="meta">Raw data: <a href="results.json">results.json</a>, '
        '<a href="results.csv">results.csv</a>.</p>'
    )
    body = [section_html(s, s.rows(rows), skipped, record.get("failures", ())) for s in present]
    contents = [(s.key, s.title) for s in present] + [("history", "earlier runs")]
    index = folder / "index.html"
    index.write_text(page(f"echolab demo {record['started']}", head, body, contents, tail))
    return index
