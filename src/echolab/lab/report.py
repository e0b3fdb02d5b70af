"""The demo's report: verdicts, a table, and charts in one self-contained HTML file."""

from __future__ import annotations

import csv
import dataclasses
import html
import importlib.util
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .results import COLUMNS, HOLD_FRACTION, Row, by_server
from .variants import COLORS

# Distinct markers keep overlapping series (several servers on the bound) visible.
MARKERS = ("o", "s", "D", "v", "^", "<", ">", "P", "X")
CSV_FIELDS = (
    "server",
    "framing",
    "connections",
    "delay_ms",
    "throughput",
    "bound",
    "bound_fraction",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "server_cpu_percent",
    "server_rss_mb",
    "server_threads",
)


def require_extra() -> None:
    """Fail at once, not after a sweep, when the ``report`` extra is missing."""
    missing = [name for name in ("rich", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: pip install 'echolab[report]' (make install does)")


def verdict(server: str, series: list[Row]) -> str:
    """One sentence: where the server holds and where it breaks."""
    held = [r for r in series if r.holds]
    broken = [r for r in series if not r.holds]
    top = series[-1]
    if not broken:
        return (
            f"{server}: holds at every level, up to {top.connections:,} connections "
            f"({top.bound_fraction or 0:.0%} of the bound, p99 {top.latency('p99') or 0:,.0f} ms)."
        )
    first = broken[0]
    where = (
        f"holds up to {plural(held[-1].connections, 'connection')}"
        if held
        else f"never reaches {HOLD_FRACTION:.0%} of the bound"
    )
    trouble = f", {first.error_count:,} errors" if first.error_count else ""
    return (
        f"{server}: {where}; at {first.connections:,} it gives "
        f"{first.bound_fraction or 0:.0%} of the bound ({first.throughput:,.0f} req/s), "
        f"p99 {first.latency('p99') or 0:,.0f} ms{trouble}."
    )


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    fig.clf()
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _style(ax: Any, ylabel: str, title: str, logy: bool = False) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("concurrent connections (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.legend(fontsize="small")


def charts(rows: list[Row]) -> list[str]:
    # Imported here: servers and the bench client share this package and
    # should not pay for loading matplotlib.
    import matplotlib

    matplotlib.use("svg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    grouped = by_server(rows)
    out = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    levels = sorted({r.connections for r in rows})
    delay = max(r.delay_ms for r in rows)
    markers = {server: MARKERS[i % len(MARKERS)] for i, server in enumerate(grouped)}
    if delay > 0:
        ax.plot(
            levels,
            [c / (delay / 1000) for c in levels],
            "k--",
            lw=1,
            label=f"Little's-law bound (connections / {delay:g} ms)",
        )
    for server, series in grouped.items():
        ax.plot(
            [r.connections for r in series],
            [r.throughput for r in series],
            "-",
            marker=markers[server],
            markersize=8,
            markerfacecolor="none",
            color=COLORS.get(server),
            alpha=0.9,
            label=server,
        )
    _style(ax, "requests / s (log scale)", "Throughput vs concurrency", logy=True)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    out.append(_svg(fig))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for server, series in grouped.items():
        x = [r.connections for r in series]
        color = COLORS.get(server)
        marker = markers[server]
        ax.plot(
            x,
            [r.latency("p50") or math.nan for r in series],
            "-",
            marker=marker,
            color=color,
            label=f"{server} p50",
        )
        ax.plot(
            x,
            [r.latency("p99") or math.nan for r in series],
            "--",
            marker=marker,
            markerfacecolor="none",
            color=color,
            label=f"{server} p99",
        )
    if delay > 0:
        ax.axhline(delay, color="k", lw=0.8, ls=":", label=f"simulated IO ({delay:g} ms)")
    _style(ax, "latency, ms (log scale)", "Client-side latency vs concurrency", logy=True)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    out.append(_svg(fig))

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(
        axes,
        ("server_cpu_percent", "server_rss_mb", "server_threads"),
        ("CPU, % of one core", "resident memory, MiB", "threads"),
        strict=True,
    ):
        for server, series in grouped.items():
            ax.plot(
                [r.connections for r in series],
                [getattr(r, key) for r in series],
                "-",
                marker=markers[server],
                markerfacecolor="none",
                color=COLORS.get(server),
                label=server,
            )
        _style(ax, label, f"Server {label.split(',')[0]}", logy=key == "server_threads")
        if key != "server_threads":
            ax.set_ylim(bottom=0)
    fig.tight_layout()
    out.append(_svg(fig))
    return out


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
    header = "".join(f"<th>{html.escape(c.title)}</th>" for c in COLUMNS)
    body = []
    for r in rows:
        cls = "" if r.holds else ' class="broken"'
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c.cell(r))}</td>" for c in COLUMNS) + "</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>echolab demo {stamp}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
h1 {{ margin-bottom: 0.2rem; }} .meta {{ color: #666; margin-top: 0; }}
table {{ border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }}
th, td {{ border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
tr.broken td {{ background: #fff1f0; }}
.verdict li {{ margin: 0.3rem 0; }} svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>Threads or asyncio: where does each one break?</h1>
<p class="meta">{stamp} &middot; TCP servers in {framing} framing (the serial baseline in oneshot,
the HTTP pair over HTTP/1.1 keep-alive), {delay:g} ms simulated IO, closed loop,
{duration:g} s per level &middot; rows in red hold less than 90% of the Little's-law bound
or fail over 1% of requests</p>
<h2>Verdict</h2><ul class="verdict">{verdicts}</ul>
<h2>Throughput</h2>{chart0}
<h2>Latency</h2>{chart1}
<h2>Server resources</h2>{chart2}
<h2>All measurements</h2>{table}
<p class="meta">Raw data: <a href="results.json">results.json</a>, <a href="results.csv">results.csv</a>.
Every server ran natively on loopback, one at a time, with the load generator on the same machine.</p>
</body></html>
"""


def write(folder: Path, rows: list[Row], settings: dict[str, Any], verdicts: Sequence[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"settings": settings, "rows": [dataclasses.asdict(r) for r in rows]}
    (folder / "results.json").write_text(json.dumps(data, indent=1))
    (folder / "results.csv").write_text(csv_text(rows))
    chart0, chart1, chart2 = charts(rows)
    page = PAGE.format(
        stamp=html.escape(settings["started"]),
        framing=settings["framing"],
        delay=settings["delay_ms"],
        duration=settings["duration"],
        verdicts="".join(f"<li>{html.escape(v)}</li>" for v in verdicts),
        chart0=chart0,
        chart1=chart1,
        chart2=chart2,
        table=html_table(rows),
    )
    index = folder / "index.html"
    index.write_text(page)
    return index
