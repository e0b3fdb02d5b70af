"""The demo's report: verdicts, a table, and charts in one self-contained HTML file."""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOLD_FRACTION = 0.9  # "holds" = at least 90% of the Little's-law bound...
HOLD_ERROR_RATE = 0.01  # ...with under 1% of requests failing
# Threads in reds, event loops in blues; the HTTP pair in lighter shades of its TCP twin.
COLORS = {
    "async": "#1f77b4",
    "threaded": "#d62728",
    "serial": "#7f7f7f",
    "async-http": "#6baed6",
    "threaded-http": "#fc9272",
}
# Distinct markers keep overlapping series (several servers on the bound) visible.
MARKERS = {"async": "s", "threaded": "o", "serial": "^", "async-http": "D", "threaded-http": "v"}
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


def by_server(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["server"], []).append(row)
    for series in grouped.values():
        series.sort(key=lambda r: r["connections"])
    return grouped


def holds(row: dict[str, Any]) -> bool:
    errors = sum(row["errors"].values())
    fraction = row["bound_fraction"] or 0.0
    return fraction >= HOLD_FRACTION and errors <= HOLD_ERROR_RATE * max(row["requests"], 1)


def verdict(server: str, series: list[dict[str, Any]]) -> str:
    """One sentence: where the server holds and where it breaks."""
    held = [r for r in series if holds(r)]
    broken = [r for r in series if not holds(r)]
    top = series[-1]
    if not broken:
        return (
            f"{server}: holds at every level, up to {top['connections']:,} connections "
            f"({top['bound_fraction']:.0%} of the bound, p99 {top['latency_ms']['p99']:,.0f} ms)."
        )
    first = broken[0]
    errors = sum(first["errors"].values())
    where = (
        f"holds up to {plural(held[-1]['connections'], 'connection')}"
        if held
        else "never reaches 90% of the bound"
    )
    trouble = f", {errors:,} errors" if errors else ""
    return (
        f"{server}: {where}; at {first['connections']:,} it gives "
        f"{first['bound_fraction'] or 0:.0%} of the bound ({first['throughput']:,.0f} req/s), "
        f"p99 {first['latency_ms']['p99']:,.0f} ms{trouble}."
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


def charts(rows: Sequence[dict[str, Any]]) -> list[str]:
    # Imported here: servers and the bench client share this package and
    # should not pay for loading matplotlib.
    import matplotlib

    matplotlib.use("svg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    grouped = by_server(rows)
    out = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    levels = sorted({r["connections"] for r in rows})
    delay = max(r["delay_ms"] for r in rows)
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
            [r["connections"] for r in series],
            [r["throughput"] for r in series],
            "-",
            marker=MARKERS.get(server, "o"),
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
        x = [r["connections"] for r in series]
        color = COLORS.get(server)
        marker = MARKERS.get(server, "o")
        ax.plot(
            x,
            [r["latency_ms"]["p50"] for r in series],
            "-",
            marker=marker,
            color=color,
            label=f"{server} p50",
        )
        ax.plot(
            x,
            [r["latency_ms"]["p99"] for r in series],
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
                [r["connections"] for r in series],
                [r[key] for r in series],
                "-",
                marker=MARKERS.get(server, "o"),
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


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS)
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                **{k: r.get(k) for k in CSV_FIELDS},
                **{f"{k}_ms": v for k, v in r["latency_ms"].items()},
                "errors": sum(r["errors"].values()),
            }
        )
    return buffer.getvalue()


def html_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "server",
        "framing",
        "connections",
        "req/s",
        "of bound",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU",
        "RSS MiB",
        "threads",
    )
    body = []
    for r in rows:
        fraction = f"{r['bound_fraction']:.1%}" if r["bound_fraction"] is not None else "-"
        cells = (
            r["server"],
            r["framing"],
            f"{r['connections']:,}",
            f"{r['throughput']:,.0f}",
            fraction,
            f"{r['latency_ms']['p50']:,.1f}",
            f"{r['latency_ms']['p99']:,.1f}",
            f"{sum(r['errors'].values()):,}",
            f"{r['server_cpu_percent']:.0f}%",
            f"{r['server_rss_mb']:.0f}",
            str(r["server_threads"]),
        )
        cls = "" if holds(r) else ' class="broken"'
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
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


def write(
    folder: Path, rows: Sequence[dict[str, Any]], settings: dict[str, Any], verdicts: Sequence[str]
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"settings": settings, "rows": list(rows)}, indent=1))
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
