"""``echolab report``: every panel of the Grafana dashboards, drawn from Prometheus, in one HTML file.

Grafana cannot run everywhere, and a pull request or a ticket wants a file.
This runs every query of every panel of the committed dashboards (the JSON
Grafana provisions) over a window against Prometheus, as Grafana would
(range queries; ``$server`` = all, ``$interval`` = Grafana's auto window for
the range), and draws each panel with matplotlib: the same title, unit,
legend, colours and dashes, the same rows and widths, the load-test runs
shaded. Time series, heatmaps (one per server where the dashboard repeats
one), tables and text are drawn; a panel that drew no data says so, and
:attr:`RunReport.empty` lists them.

For a script (``make test-stack``): :func:`write_report` with the window as
Unix times returns a :class:`RunReport`.
"""

from __future__ import annotations

import html
import io
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from ..dashboards.panels import Dashboard, NoData, load, resolve_variables, substitute
from ..dashboards.prometheus import Prometheus, PrometheusError
from ..settings import ReportSettings, duration_seconds
from . import stack_marks
from .report import require_extra
from .stack_marks import Mark

POINTS = 240  # per series: about one per 5 px of a full-width panel, as Grafana asks for
PAGE_WIDTH = 14.0  # inches at 24 grid columns
PANEL_HEIGHT = 2.3  # inches of chart for Grafana's 8 grid units
# For series the overrides leave alone (Locust processes, failure kinds): none of the servers' colours.
OTHER_COLOURS = ("#555555", "#9467bd", "#8c6d31", "#999999", "#637939", "#7b4173", "#bd9e39", "#393b79")
MISSING = math.nan
FALLBACK = "15m"  # the window when no load-test run is found
LINE_STYLES = {"solid": "-", "dash": "--", "dot": ":"}  # Grafana's lineStyle fills, in matplotlib


# --- what a window and a panel come to ----------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def step(self) -> float:
        return max(1.0, round((self.end - self.start) / POINTS))

    def rate_window(self, dashboard: Dashboard) -> str:
        """Grafana's auto interval: the range over the variable's step count, at least its minimum."""
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] == "interval" and variable.get("auto"):
                least = duration_seconds(variable.get("auto_min", "10s"))
                return f"{max(least, (self.end - self.start) / variable.get('auto_count', 30)):.0f}s"
        return "1m"


@dataclass
class Series:
    name: str
    times: list[float]
    values: list[float]
    colour: str
    line: str = "solid"  # Grafana's lineStyle fill: solid, dash or dot

    def finite(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]


@dataclass
class PanelResult:
    """One drawn panel (a repeated panel: one per value); ``has_data``: it drew at least one number."""

    dashboard: str
    title: str
    kind: str
    has_data: bool
    html: str = field(repr=False, default="")


@dataclass
class RunReport:
    path: Path
    panels: list[PanelResult]

    @property
    def empty(self) -> list[str]:
        """The panels that queried Prometheus and drew nothing."""
        return [f"{p.dashboard}: {p.title}" for p in self.panels if p.kind != "text" and not p.has_data]


# --- values and units ------------------------------------------------------------------------------


def number(text: str) -> float:
    value = float(text)  # Prometheus sends "NaN", "+Inf", "-Inf" as such
    return value if math.isfinite(value) else MISSING


def _num(value: float) -> str:
    """Three significant digits, never an exponent (1,250 rather than 1.25e+03)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _si(value: float, suffix: str = "") -> str:
    # k only from 10,000: 1,250 reads better than 1.25k.
    for least, factor, prefix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(value) >= least:
            return f"{_num(value / factor)}{prefix}{suffix}"
    return f"{_num(value)}{suffix}"


def _binary(value: float, suffix: str) -> str:
    for factor, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(value) >= factor:
            return f"{_num(value / factor)} {prefix}{suffix}"
    return f"{_num(value)} B{suffix}"


def _seconds(value: float) -> str:
    if value == 0 or abs(value) >= 1:
        return f"{_num(value)} s"
    if abs(value) >= 1e-3:
        return f"{_num(value * 1e3)} ms"
    return f"{_num(value * 1e6)} µs"


def format_value(unit: str, value: float) -> str:
    """A value as Grafana shows it in ``unit`` (the units these dashboards use)."""
    if not math.isfinite(value):
        return "-"
    formats: dict[str, Callable[[float], str]] = {
        "percentunit": lambda v: f"{_num(v * 100)}%",
        "s": _seconds,
        "µs": lambda v: _seconds(v / 1e6),
        "bytes": lambda v: _binary(v, ""),
        "Bps": lambda v: _binary(v, "/s"),
        "reqps": lambda v: _si(v, " req/s"),
        "cps": lambda v: _si(v, " c/s"),
    }
    return formats.get(unit, _si)(value)


def legend_name(template: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' label (empty if it has none)."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def overrides(panel: dict[str, Any], name: str) -> tuple[str | None, str]:
    """The fixed colour and the line style that the panel's overrides give the series called ``name``."""
    colour, line = None, "solid"
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override["matcher"]
        matched = (matcher["id"] == "byRegexp" and re.search(matcher["options"], name)) or (
            matcher["id"] == "byName" and matcher["options"] == name
        )
        if not matched:
            continue
        for prop in override["properties"]:
            if prop["id"] == "color":
                colour = prop["value"].get("fixedColor", colour)
            elif prop["id"] == "custom.lineStyle":
                line = prop["value"].get("fill", line)
    return colour, line


# --- querying ------------------------------------------------------------------------------------


class Panels:
    """One dashboard over one window: its variables resolved, its queries run, its runs found."""

    def __init__(self, prometheus: Prometheus, dashboard: Dashboard, window: Window) -> None:
        self.prometheus, self.dashboard, self.window = prometheus, dashboard, window
        self.values = resolve_variables(prometheus, dashboard, window.rate_window(dashboard))
        self.runs = self.annotations()

    def titles(self, values: dict[str, str]) -> dict[str, str]:
        """The variables as a title shows them: a multi-value one with every value selected is "All"."""
        every = [v["name"] for v in self.dashboard["templating"]["list"] if v.get("includeAll")]
        return {**values, **{name: "All" for name in every if values[name] == self.values[name]}}

    def range(self, expr: str, values: dict[str, str]) -> list[dict[str, Any]]:
        w = self.window
        return self.prometheus.query_range(substitute(expr, values), w.start, w.end, w.step)

    def series(self, panel: dict[str, Any], values: dict[str, str]) -> list[Series]:
        found: list[Series] = []
        others = 0
        for target in panel.get("targets", []):
            for result in self.range(target["expr"], values):
                name = legend_name(target.get("legendFormat", ""), result["metric"]) or target["expr"]
                colour, line = overrides(panel, name)
                if colour is None:
                    colour = OTHER_COLOURS[others % len(OTHER_COLOURS)]
                    others += 1
                times = [float(t) for t, _ in result["values"]]
                found.append(Series(name, times, [number(v) for _, v in result["values"]], colour, line))
        return found

    def instant(self, expr: str, values: dict[str, str]) -> list[dict[str, Any]]:
        """At the end of the window (a table)."""
        return self.prometheus.query(substitute(expr, values), self.window.end)

    def annotations(self) -> list[Mark]:
        """The annotations' regions: where each query is 1 or more, as Grafana shades them."""
        w = self.window
        return stack_marks.marks(self.prometheus, self.dashboard, self.values, (w.start, w.end, w.step))


# --- drawing ---------------------------------------------------------------------------------------


class Drawing:
    """matplotlib, loaded when a report is drawn (the servers share this package)."""

    def __init__(self) -> None:
        require_extra()
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
        from matplotlib.colors import PowerNorm
        from matplotlib.ticker import FuncFormatter

        plt.rcParams.update({"font.size": 8})  # text as paths: drawn where matplotlib measured it
        self.plt, self.mdates, self.PowerNorm, self.FuncFormatter = plt, mdates, PowerNorm, FuncFormatter

    def figure(self, width: int) -> tuple[Any, Any]:
        fig, ax = self.plt.subplots(figsize=(PAGE_WIDTH * width / 24, PANEL_HEIGHT))
        ax.grid(True, alpha=0.25)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        return fig, ax

    def time_axis(self, ax: Any, window: Window, runs: list[Mark], width: int) -> None:
        ax.set_xlim(datetime.fromtimestamp(window.start), datetime.fromtimestamp(window.end))
        # About one time label per 3 grid columns: narrow panels would overlap them.
        locator = self.mdates.AutoDateLocator(minticks=2, maxticks=max(3, width // 3))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(self.mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
        for mark in runs:
            # At least a step wide: a restart marked by one sample is still seen.
            start, end = mark.start, max(mark.end, mark.start + window.step)
            ax.axvspan(datetime.fromtimestamp(start), datetime.fromtimestamp(end), color=mark.colour,
                       alpha=0.12, lw=0)  # fmt: skip

    def svg(self, fig: Any) -> str:
        buffer = io.StringIO()
        fig.tight_layout(pad=0.4)
        fig.savefig(buffer, format="svg")
        self.plt.close(fig)
        text = buffer.getvalue()
        return text[text.index("<svg") :]

    def timeseries(self, panel: dict[str, Any], series: list[Series], window: Window, runs: Any) -> str:
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        fig, ax = self.figure(panel["gridPos"]["w"])
        for s in series:
            times, values = with_gaps(s.times, s.values, window.step)
            ax.plot([datetime.fromtimestamp(t) for t in times], values, color=s.colour, lw=1.1,
                    ls=LINE_STYLES.get(s.line, "-"))  # fmt: skip
        for step in defaults.get("thresholds", {}).get("steps", []):
            if step.get("value") is not None and defaults.get("custom", {}).get("thresholdsStyle"):
                ax.axhline(step["value"], color="red", lw=0.9, ls="--")
        if defaults.get("min") is not None:
            ax.set_ylim(bottom=defaults["min"])
        soft_max = defaults.get("custom", {}).get("axisSoftMax")
        if soft_max is not None and ax.get_ylim()[1] < soft_max:
            ax.set_ylim(top=soft_max)
        ax.yaxis.set_major_formatter(self.FuncFormatter(lambda v, _: format_value(unit, v)))
        self.time_axis(ax, window, runs, panel["gridPos"]["w"])
        return self.svg(fig)

    def heatmap(self, panel: dict[str, Any], series: list[Series], window: Window, runs: Any) -> str:
        """Grafana's heatmap of Prometheus buckets: cumulative ``le`` series made per-bucket counts."""
        buckets = sorted(series, key=lambda s: float(s.name))
        times = sorted({t for s in buckets for t in s.times})
        at = {t: i for i, t in enumerate(times)}
        cumulative = [[0.0] * len(times) for _ in buckets]
        for row, s in zip(cumulative, buckets, strict=True):
            for t, v in zip(s.times, s.values, strict=True):
                row[at[t]] = v if math.isfinite(v) else 0.0
        counts = [cumulative[0]] + [
            [b - a for a, b in zip(lower, upper, strict=True)] for lower, upper in pairwise(cumulative)
        ]
        used = [i for i, row in enumerate(counts) if any(v > 0 for v in row)] or [0]
        low, high = max(used[0] - 1, 0), min(used[-1] + 1, len(buckets) - 1)
        fig, ax = self.figure(panel["gridPos"]["w"])
        edges = [datetime.fromtimestamp(t) for t in (*times, times[-1] + window.step)] if times else []
        if edges:
            grid = [[max(v, 0.0) for v in row] for row in counts[low : high + 1]]
            norm = self.PowerNorm(0.5, vmin=0)  # as Grafana's exponential scale, exponent 0.5
            mesh = ax.pcolormesh(edges, range(high - low + 2), grid, cmap="viridis", norm=norm,
                                 shading="flat", edgecolors="none", rasterized=True)  # fmt: skip
            bar = fig.colorbar(mesh, ax=ax, pad=0.01)
            bar.ax.yaxis.set_major_formatter(self.FuncFormatter(lambda v, _: format_value("reqps", v)))
        labels = [format_value("s", float(s.name)) if s.name != "+Inf" else "+Inf" for s in buckets]
        ticks = list(range(high - low + 1))[:: max(1, (high - low + 1) // 8)]
        ax.set_yticks([i + 0.5 for i in ticks], [f"≤ {labels[low + i]}" for i in ticks])
        ax.grid(False)
        self.time_axis(ax, window, runs, panel["gridPos"]["w"])
        return self.svg(fig)


def with_gaps(times: list[float], values: list[float], step: float) -> tuple[list[float], list[float]]:
    """A missing sample between two (more than 1.5 steps apart) breaks the line, as Grafana's does."""
    out_t: list[float] = []
    out_v: list[float] = []
    for t, v in zip(times, values, strict=True):
        if out_t and t - out_t[-1] > 1.5 * step:
            out_t.append(out_t[-1] + step)
            out_v.append(MISSING)
        out_t.append(t)
        out_v.append(v)
    return out_t, out_v


# --- HTML --------------------------------------------------------------------------------------------


def legend_table(series: list[Series], unit: str) -> str:
    rows = []
    for s in series:
        finite = s.finite()
        mean = sum(finite) / len(finite) if finite else MISSING
        top = max(finite) if finite else MISSING
        last = finite[-1] if finite else MISSING
        swatch = f'<span class="sw {s.line}" style="border-color:{s.colour}"></span>'
        cells = "".join(f"<td>{format_value(unit, v)}</td>" for v in (mean, top, last))
        rows.append(f"<tr><th>{swatch}{html.escape(s.name)}</th>{cells}</tr>")
    return (
        '<table class="legend"><tr><th></th><td>mean</td><td>max</td><td>last</td></tr>'
        + "".join(rows)
        + "</table>"
    )


def markdown(text: str) -> str:
    """The little Markdown the text panels use: paragraphs, bullets, bold, italics, code."""

    def inline(line: str) -> str:
        line = html.escape(line)
        line = re.sub(r"`([^`]+)`", r"<code>\1</code>", line)
        line = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", line)
        return re.sub(r"\*([^*]+)\*", r"<i>\1</i>", line)

    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if all(line.startswith("* ") for line in lines):
            out.append("<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            out.append(f"<p>{inline(' '.join(lines))}</p>")
    return "".join(out)


def table_html(panel: dict[str, Any], rows: list[dict[str, str]]) -> str:
    """An instant query as Grafana's organize transformation shows it: columns ordered, hidden, renamed."""
    options: dict[str, Any] = {}
    for transformation in panel.get("transformations", []):
        if transformation["id"] == "organize":
            options = transformation["options"]
    hidden, order, rename = (options.get(k, {}) for k in ("excludeByName", "indexByName", "renameByName"))
    present = {label for row in rows for label in row}
    columns = sorted((c for c in present if not hidden.get(c)), key=lambda c: (order.get(c, len(order)), c))
    head = "".join(f"<th>{html.escape(rename.get(c, c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f'<table class="data"><tr>{head}</tr>{body}</table>'


NOT_APPLYING = "n/a"  # a label the series lacks: a setting the server does not have, or not in force


def cell(value: str | None) -> str:
    if value is None:
        return f'<td class="na" title="does not apply to this server">{NOT_APPLYING}</td>'
    return f"<td>{html.escape(value)}</td>"


def panel_html(title: str, width: int, body: str, description: str = "") -> str:
    about = f'<p class="desc">{html.escape(description)}</p>' if description else ""
    heading = f"<h3>{html.escape(title)}</h3>"
    return f'<div class="panel" style="grid-column: span {width}">{heading}{body}{about}</div>'


# --- the report -----------------------------------------------------------------------------------


def draw_dashboard(
    prometheus: Prometheus, dashboard: Dashboard, window: Window, drawing: Drawing
) -> tuple[str, list[PanelResult], list[stack_marks.Mark]]:
    """The dashboard's rows and panels as HTML, what each panel drew, and the runs and changes it shades."""
    title = dashboard["title"]
    try:
        panels: Panels | None = Panels(prometheus, dashboard, window)
    except NoData as exc:  # e.g. no server scraped yet: every panel that queries is empty, as in Grafana
        panels, problem = None, str(exc)
    results: list[PanelResult] = []
    parts = [
        f"<h1>{html.escape(title)}</h1><p>{html.escape(dashboard.get('description', ''))}</p>",
        '<div class="grid">',
    ]
    for panel in dashboard.get("panels", []):
        kind = panel["type"]
        if kind == "row":
            parts.append(f'</div><h2>{html.escape(panel["title"])}</h2><div class="grid">')
            continue
        if kind == "text":
            drawn = [(panel["title"], True, markdown(panel.get("options", {}).get("content", "")))]
        elif panels is None:
            drawn = [(panel["title"], False, f'<p class="nodata">No data: {html.escape(problem)}</p>')]
        else:
            drawn = [
                # A title shows a multi-value variable as Grafana does: "All" when every value is selected.
                (
                    substitute(panel["title"], panels.titles(values)),
                    *draw_panel(panel, values, panels, drawing),
                )
                for values in repeats(panel, panels)
            ]
        for name, has_data, body in drawn:
            part = panel_html(name, panel["gridPos"]["w"], body, panel.get("description", ""))
            results.append(PanelResult(title, name, kind, has_data, part))
            parts.append(part)
    parts.append("</div>")
    return "".join(parts), results, panels.runs if panels is not None else []


def draw_panel(
    panel: dict[str, Any], values: dict[str, str], panels: Panels, drawing: Drawing
) -> tuple[bool, str]:
    """One query panel with these variables: whether it drew data, and its HTML."""
    kind, window = panel["type"], panels.window
    if kind == "table":
        rows = [r["metric"] for t in panel["targets"] for r in panels.instant(t["expr"], values)]
        return bool(rows), table_html(panel, rows)
    series = panels.series(panel, values)
    if not any(s.finite() for s in series):
        return False, '<p class="nodata">No data</p>'
    if kind == "heatmap":
        return True, drawing.heatmap(panel, series, window, panels.runs)
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    return True, drawing.timeseries(panel, series, window, panels.runs) + legend_table(series, unit)


def repeats(panel: dict[str, Any], panels: Panels) -> Iterator[dict[str, str]]:
    """The variables for each copy of a panel: one per value of its repeat variable, else one."""
    name = panel.get("repeat")
    if not name:
        yield panels.values
        return
    values = panels.values[name].split("|")
    width = max(24 // min(len(values), int(panel.get("maxPerRow", 4))), 1)
    panel["gridPos"] = {**panel["gridPos"], "w": width}
    for value in values:
        yield {**panels.values, name: value}


STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:20px 0 2px} h2{font-size:15px;margin:18px 0 6px;border-bottom:1px solid #ccc}
.meta{color:#555} .grid{display:grid;grid-template-columns:repeat(24,1fr);gap:8px}
.panel{background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px;min-width:0}
.panel h3{font-size:13px;margin:0 0 4px} .panel svg{width:100%;height:auto}
.desc{color:#666;font-size:11px;margin:4px 0 0} .nodata{color:#b00;font-weight:bold}
table{border-collapse:collapse;font-size:11px} td,th{padding:1px 6px;text-align:right}
.legend th{text-align:left;font-weight:normal} .legend tr:first-child td{color:#888}
.data{width:100%} .data th{background:#eee}
.data td,.data th{border:1px solid #ddd;text-align:left;overflow-wrap:anywhere;vertical-align:top}
.data td.na{color:#999;text-align:center} .marks{margin-bottom:8px}
.sw{display:inline-block;width:14px;border-top:3px solid;margin:0 6px 3px 0}
.sw.dash{border-top-style:dashed} .sw.dot{border-top-style:dotted}
ul{margin:4px 0;padding-left:18px} p{margin:4px 0}
"""


def dashboard_files(dashboards: Path) -> list[Path]:
    """The dashboards to draw, the home dashboard first, as Grafana opens it."""
    files = sorted(dashboards.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no dashboards (*.json) in {dashboards}")
    return sorted(files, key=lambda p: "overview" not in p.name)


def write_report(
    prometheus_url: str, start: float, end: float, out: Path, dashboards: Path = Path("grafana/dashboards")
) -> RunReport:
    """Draw every dashboard in ``dashboards`` over [start, end] (Unix times) into ``out`` (a file)."""
    drawing = Drawing()
    prometheus = Prometheus(prometheus_url)
    window = Window(start, end)
    loaded = [load(path) for path in dashboard_files(dashboards)]
    drawn = [draw_dashboard(prometheus, dashboard, window, drawing) for dashboard in loaded]
    bodies = [body for body, _, _ in drawn]
    results = [result for _, panels, _ in drawn for result in panels]
    home, found = loaded[0], drawn[0][2]  # the runs and changes listed at the top: the home dashboard's
    span = f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M:%S} to {datetime.fromtimestamp(end):%H:%M:%S}"
    empty = [r for r in results if r.kind != "text" and not r.has_data]
    shades = ", ".join(
        f'<span style="background:{colour}33;padding:0 4px">{html.escape(name.lower())}</span>'
        for name, colour in stack_marks.legend(home)
    )
    meta = (
        f'<p class="meta">{html.escape(span)} from {html.escape(prometheus_url)}: {len(results)} panels, '
        f"{len(empty)} without data. Shaded: {shades}. Generated by <code>echolab report</code>.</p>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>echolab run report, {html.escape(span)}</title><style>{STYLE}</style></head>"
        f"<body>{meta}{stack_marks.marks_html(prometheus, found)}{''.join(bodies)}</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return RunReport(out, results)


def report_window(settings: ReportSettings, now: float) -> tuple[float, float, str]:
    """--since's window until now; without it, the last load-test run's, a little wider. And what it is."""
    if settings.since:
        return now - duration_seconds(settings.since), now, f"the last {settings.since}"
    home = load(dashboard_files(settings.dashboards)[0])
    run = stack_marks.last_run(Prometheus(settings.prometheus), home, now)
    if run is None:
        lookback = f"{stack_marks.LOOKBACK / 3600:g} h"
        return now - duration_seconds(FALLBACK), now, f"no load-test run in {lookback}: the last {FALLBACK}"
    start, end = stack_marks.around(run, now)
    running = " (running)" if run[1] >= now else ""
    return (
        start,
        end,
        f"the last load-test run{running}, {datetime.fromtimestamp(run[0]):%H:%M:%S} to "
        f"{datetime.fromtimestamp(run[1]):%H:%M:%S}, and a little around it",
    )


def main(settings: ReportSettings) -> int:
    now = time.time()
    try:
        start, end, window = report_window(settings, now)
        out = settings.out / f"stack-{datetime.fromtimestamp(now):%Y%m%d-%H%M%S}.html"
        report = write_report(settings.prometheus, start, end, out, settings.dashboards)
    except (PrometheusError, FileNotFoundError) as exc:
        print(f"echolab report: error: {exc}", file=sys.stderr)
        return 2
    print(f"run report: {report.path} ({len(report.panels)} panels; {window})")
    for name in report.empty:
        print(f"  no data: {name}", file=sys.stderr)
    return 0
