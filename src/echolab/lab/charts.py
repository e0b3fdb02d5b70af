"""The report's charts, as inline SVG: one function per figure, any number of series.

A series is one server's rows in one run, drawn in the server's colour from
the catalogue (:data:`echolab.lab.contenders.COLORS`); ``echolab compare``
draws the second run's series dashed. Legends sit outside the plots, on the
right; the bound (100%, or offered = achieved) is drawn above the data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..load.bench_result import BUCKETS_PER_DECADE
from .contenders import COLORS
from .results import Row

# Distinct markers keep overlapping series (several servers on the bound) visible.
MARKERS = ("o", "s", "D", "v", "^", "<", ">", "P", "X")
BOUND_STYLE = {"color": "black", "lw": 1.4, "ls": "--", "zorder": 10}
MAX_DISTRIBUTION_PANELS = 4
BUCKET_RATIO = 10 ** (1 / BUCKETS_PER_DECADE)  # a histogram bucket's upper edge / its lower edge


@dataclass(frozen=True)
class Series:
    label: str
    rows: list[Row]  # sorted by level
    color: str | None = None
    marker: str = "o"
    dashed: bool = False

    @property
    def x(self) -> list[float]:
        return [r.level for r in self.rows]

    def style(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "marker": self.marker,
            "markerfacecolor": "none",
            "markersize": 7,
            "ls": "--" if self.dashed else "-",
            "label": self.label,
            "zorder": 3,
        }


def series_of(grouped: dict[str, list[Row]], suffix: str = "", dashed: bool = False) -> list[Series]:
    """A series per server, in its catalogue colour and a marker of its own; a server under another
    interpreter (``threaded@3.13``) in its colour too, dashed."""
    return [
        Series(
            name + suffix,
            rows,
            COLORS.get(name.split("@")[0]),
            MARKERS[i % len(MARKERS)],
            dashed or "@" in name,
        )
        for i, (name, rows) in enumerate(grouped.items())
    ]


def _pyplot() -> Any:
    # Imported here: servers and the bench client share this package and
    # should not pay for loading matplotlib.
    import matplotlib

    matplotlib.use("svg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")  # constrained layout keeps the legend in, with no second pass
    _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _thousands(value: float, _: object) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _log(axis: Any, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, 50... (``subs`` of each decade): plain numbers, no 10^x."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_thousands))
    # Few minor ticks: every tick is an artist, and the default eight a decade made
    # drawing the report's charts take most of a minute on a busy machine.
    minor = tuple(m for m in (2.0, 5.0) if m not in subs) if subs == (1.0,) else ()
    axis.set_minor_locator(LogLocator(base=10, subs=minor) if minor else NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _level_axis(ax: Any, mode: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if mode == "open":
        ax.set_xlabel("offered load, requests/s")
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # the panels are narrow
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    else:
        ax.set_xscale("log")
        ax.set_xlabel("concurrent connections (log scale)")
        _log(ax.xaxis, (1.0,))  # decades: the panels are narrow
    ax.grid(True, which="both", alpha=0.3)


def _legend(fig: Any, axes: Sequence[Any]) -> None:
    """One legend for the figure, right of the plots; each label once."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(seen.values(), seen.keys(), loc="outside right upper", fontsize="small")


def bound_chart(series: list[Series], mode: str, delay_ms: float) -> str:
    """Share of the bound (linear: the knee shows), and throughput against the bound."""
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    plt = _pyplot()
    fig, (share, rate) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    top = 1.1
    for s in series:
        fractions = [r.bound_fraction if r.bound_fraction is not None else math.nan for r in s.rows]
        share.plot(s.x, fractions, **s.style())
        top = max([top, *(f * 1.05 for f in fractions if not math.isnan(f))])  # none: a run with a problem
        rate.plot(s.x, [r.throughput for r in s.rows], **s.style())
    levels = sorted({x for s in series for x in s.x})
    what = "the offered rate" if mode == "open" else "the Little's-law bound"
    share.axhline(1.0, **BOUND_STYLE, label=f"100% of {what}")
    share.set_ylim(0, top)
    share.yaxis.set_major_formatter(PercentFormatter(1.0))
    share.set_ylabel(f"throughput, % of {what}")
    share.set_title(f"Share of {what}")
    if mode == "open":
        rate.plot(levels, levels, **BOUND_STYLE, label="achieved = offered")
        rate.set_ylim(bottom=0)
        rate.set_title("Achieved against offered rate")
        rate.set_ylabel("achieved requests/s")
    else:
        if delay_ms > 0:
            bound = [n / (delay_ms / 1000) for n in levels]
            rate.plot(
                levels, bound, **BOUND_STYLE, label=f"Little's-law bound (connections / {delay_ms:g} ms)"
            )
        rate.set_yscale("log")
        rate.set_title("Throughput")
        rate.set_ylabel("requests/s (log scale)")
    if mode == "open":
        rate.yaxis.set_major_formatter(FuncFormatter(_thousands))
    else:
        _log(rate.yaxis)
    for ax in (share, rate):
        _level_axis(ax, mode)
    _legend(fig, (share, rate))
    return _svg(fig)


def latency_chart(series: list[Series], mode: str, delay_ms: float) -> str:
    """p50, p99 and p99.9 against the level, one panel each (log scale)."""
    plt = _pyplot()
    keys = ("p50", "p99", "p99.9")
    fig, axes = plt.subplots(1, len(keys), figsize=(12, 3.8), layout="constrained", sharey=True)
    for ax, key in zip(axes, keys, strict=True):
        for s in series:
            ax.plot(s.x, [r.latency(key) or math.nan for r in s.rows], **s.style())
        if delay_ms > 0:
            ax.axhline(delay_ms, color="black", lw=0.8, ls=":", zorder=10, label=f"the work: {delay_ms:g} ms")
        ax.set_yscale("log")
        _log(ax.yaxis)
        ax.set_title(f"{key} latency")
        _level_axis(ax, mode)
    axes[0].set_ylabel("ms, client side (log scale)")
    if mode == "open":
        fig.suptitle(
            "Latency from each request's intended send time, against offered load", fontsize="medium"
        )
    _legend(fig, axes)
    return _svg(fig)


def distribution_chart(series: list[Series], mode: str) -> str:
    """The latency distribution (CDF from the client's histogram) at each level, a panel per level.

    The panels share their latency axis, so that a distribution that widens
    with the level shows as one.
    """
    from matplotlib.ticker import PercentFormatter

    plt = _pyplot()
    levels = sorted({x for s in series for x in s.x})
    if len(levels) > MAX_DISTRIBUTION_PANELS:  # the highest levels: where the servers differ
        levels = levels[-MAX_DISTRIBUTION_PANELS:]
    columns = min(4, len(levels))
    rows = math.ceil(len(levels) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(12, 2.8 * rows + 0.4), layout="constrained", sharex=True, sharey=True,
        squeeze=False,
    )  # fmt: skip

    def title(level: float) -> str:
        return (
            f"{level:,.0f} req/s offered"
            if mode == "open"
            else f"{level:,.0f} connection" + "s" * (level != 1)
        )

    for ax, level in zip(axes.flat, levels, strict=False):
        for s in series:
            row = next((r for r in s.rows if r.level == level), None)
            if row is None or not row.histogram_ms:
                continue
            edges, counts = zip(*row.histogram_ms, strict=True)
            total = sum(counts)
            running = 0
            cumulative = [0.0]
            for count in counts:
                running += count
                cumulative.append(running / total)
            # From the first bucket's lower edge at 0%, each bucket's upper edge at its share.
            ax.step(
                [edges[0] / BUCKET_RATIO, *edges], cumulative, where="post", **(s.style() | {"marker": None})
            )
        ax.set_xscale("log")
        _log(ax.xaxis, (1.0, 3.0))
        ax.set_title(title(level), fontsize="medium")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(levels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("requests at or below")
    for ax in axes[-1, :]:
        ax.set_xlabel("latency, ms (log scale)")
    _legend(fig, list(axes.flat[: len(levels)]))
    return _svg(fig)


RESOURCES: tuple[tuple[str, str, Callable[[Row], float]], ...] = (
    ("Server CPU", "CPU, % of one core", lambda r: r.server_cpu_percent),
    ("Server memory", "resident memory, MiB", lambda r: r.server_rss_mb),
    ("Server threads", "threads (log scale)", lambda r: r.server_threads),
)


def resource_chart(series: list[Series], mode: str) -> str:
    """The server's CPU, memory and threads while the client ran."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(RESOURCES), figsize=(12, 3.6), layout="constrained")
    for ax, (title, label, value) in zip(axes, RESOURCES, strict=True):
        for s in series:
            ax.plot(s.x, [value(r) for r in s.rows], **s.style())
        ax.set_title(title)
        ax.set_ylabel(label)
        _level_axis(ax, mode)
        if title == "Server threads":
            ax.set_yscale("log")
            _log(ax.yaxis)
        else:
            ax.set_ylim(bottom=0)
    _legend(fig, axes)
    return _svg(fig)


def section_charts(series: list[Series], mode: str, delay_ms: float) -> list[tuple[str, str]]:
    """(title, SVG) of every chart of one section of a report."""
    return [
        ("Throughput against the bound", bound_chart(series, mode, delay_ms)),
        ("Latency", latency_chart(series, mode, delay_ms)),
        ("Latency distribution at each level", distribution_chart(series, mode)),
        ("Server resources", resource_chart(series, mode)),
    ]
