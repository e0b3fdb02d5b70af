"""What the dashboards mark on their time axis, for ``echolab report``: load-test runs and server restarts.

Both dashboards carry the two annotations (:mod:`echolab.dashboards.grafana`):
where a Locust master or local process ran a test, and where a server was down
or had just restarted (the rule ``server:echo_restarted:30s``, whatever
recreated it: ``make scenario``, ``make up`` after an edit, a crash). The
report shades both on every chart as Grafana does, takes its default window
from the last run, and lists each mark with the requests that failed in it, so
a switch's failures are counted and attributed to it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from ..dashboards.panels import RESTARTS, RUNS, Dashboard, NoData, resolve_variables, substitute
from ..dashboards.prometheus import Prometheus
from ..metrics import spec
from ..settings import ServeSettings

LOOKBACK = 24 * 3600.0  # how far back the report looks for the last run
LOOKBACK_STEP = 10.0  # 8,640 points: under Prometheus' 11,000 a series
MARGIN = 0.1  # of a run's length, shown before and after it (at least MARGIN_SECONDS)
MARGIN_SECONDS = 30.0
# A restarted server's users fail from the old process's SIGTERM on: it drains for up to the
# drain timeout, then its container is stopped and the new one created and started.
BEFORE_START = ServeSettings.drain_timeout + 5.0
FAILURES = spec("echo_client_failures").exposed
INFO = spec("echo_server").exposed
STARTED = "process_start_time_seconds"  # what every server exports, gunicorn's master for the HTTP ones
SERVERS_JOB = 'job="echo-servers"'  # prometheus/prometheus.yml: the servers' own series, not Locust's
NOT_SETTINGS = frozenset({"__name__", "job", "instance", "server", "pod"})


@dataclass(frozen=True)
class Mark:
    """One region of one annotation: where its query was 1 or more, Grafana's rule."""

    annotation: str
    start: float
    end: float
    colour: str
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


def runs_of(times: list[float], step: float) -> Iterator[tuple[float, float]]:
    """Consecutive times (at most 1.5 steps apart) as (first, last)."""
    start = previous = None
    for t in times:
        if start is None:
            start = t
        elif previous is not None and t - previous > 1.5 * step:
            yield start, previous
            start = t
        previous = t
    if start is not None and previous is not None:
        yield start, previous


def marks(
    prometheus: Prometheus,
    dashboard: Dashboard,
    values: dict[str, str],
    window: tuple[float, float, float],
    only: str = "",
) -> list[Mark]:
    """The regions of the dashboard's annotations (``only``: of that one) over (start, end, step)."""
    start, end, step = window
    found: list[Mark] = []
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("target", {}).get("expr")
        if not expr or not annotation.get("enable", True) or only not in ("", annotation["name"]):
            continue
        for result in prometheus.query_range(substitute(expr, values), start, end, step):
            times = [float(t) for t, v in result["values"] if float(v) >= 1]
            labels = tuple(sorted(result["metric"].items()))
            found.extend(
                Mark(annotation["name"], a, b, annotation.get("iconColor", "grey"), labels)
                for a, b in runs_of(times, step)
            )
    return found


def last_run(prometheus: Prometheus, dashboard: Dashboard, now: float) -> tuple[float, float] | None:
    """The last load-test run within LOOKBACK, as (start, end): end is now while it runs."""
    try:
        values = resolve_variables(prometheus, dashboard, "1m")
    except NoData:  # no server scraped in all that time: no run either
        return None
    runs = marks(prometheus, dashboard, values, (now - LOOKBACK, now, LOOKBACK_STEP), RUNS)
    if not runs:
        return None
    last = max(runs, key=lambda m: m.end)
    return last.start, (now if now - last.end <= 1.5 * LOOKBACK_STEP else last.end)


def around(run: tuple[float, float], now: float) -> tuple[float, float]:
    """A window around a run: a little before it starts, a little after it ends, never past now."""
    start, end = run
    margin = max(MARGIN_SECONDS, MARGIN * (end - start))
    return start - margin, min(now, end + margin)


# --- what happened in each mark ------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """Servers restarted together (their marks overlap): when, which, what changed, what failed."""

    start: float
    end: float
    servers: tuple[str, ...]


def changes(found: list[Mark]) -> list[Change]:
    """The server restarts, overlapping ones (a switch of several servers) joined into one."""
    joined: list[Change] = []
    for mark in sorted((m for m in found if m.annotation == RESTARTS), key=lambda m: m.start):
        server = mark.label("server")
        if joined and mark.start <= joined[-1].end:
            last = joined[-1]
            servers = last.servers if server in last.servers else (*last.servers, server)
            joined[-1] = Change(last.start, max(last.end, mark.end), servers)
        else:
            joined.append(Change(mark.start, mark.end, (server,)))
    return joined


def selector(servers: tuple[str, ...], *more: str) -> str:
    """A series selector for these servers' series (none named: every server's), with ``more`` matchers."""
    matchers = [*more, *([f'server=~"{"|".join(servers)}"'] if servers else [])]
    return "{" + ", ".join(matchers) + "}"


def failed(prometheus: Prometheus, servers: tuple[str, ...], since: float, until: float) -> dict[str, float]:
    """Requests to ``servers`` (all: none named) that Locust counted failed between two times, by kind.

    From the counters as last scraped at each time, so a failure counts in one
    mark only; a counter that restarted (a Locust process did) counts from 0.
    """
    expr = f"sum by (kind) ({FAILURES}{selector(servers)})"
    before = {r["metric"].get("kind", ""): float(r["value"][1]) for r in prometheus.query(expr, since)}
    after = {r["metric"].get("kind", ""): float(r["value"][1]) for r in prometheus.query(expr, until)}
    grown = {kind: value - before.get(kind, 0.0) if value >= before.get(kind, 0.0) else value
             for kind, value in after.items()}  # fmt: skip
    return {kind: value for kind, value in sorted(grown.items()) if value > 0}


def first_start(prometheus: Prometheus, change: Change) -> float:
    """When the first of the change's new server processes started (their own start time)."""
    result = prometheus.query(f"min({STARTED}{selector(change.servers, SERVERS_JOB)})", change.end)
    started = [float(r["value"][1]) for r in result]
    return min([t for t in started if math.isfinite(t) and t <= change.end] or [change.start])


def settings_changed(prometheus: Prometheus, change: Change, before: float) -> list[str]:
    """What each restarted server runs with now that it did not before: ``server: name old → new``."""
    expr = f"{INFO}{selector(change.servers)}"

    def info(at: float) -> dict[str, dict[str, str]]:
        return {r["metric"]["server"]: r["metric"] for r in prometheus.query(expr, at)}

    old, new = info(before), info(change.end)
    by_change: dict[str, list[str]] = {}  # servers that changed alike share a line
    for server in change.servers:
        was, now = old.get(server), new.get(server, {})
        if was is None:
            moved = "started"
        else:
            names = sorted((set(was) | set(now)) - NOT_SETTINGS)
            moved = ", ".join(
                f"{n} {was.get(n, 'n/a')} → {now.get(n, 'n/a')}" for n in names if was.get(n) != now.get(n)
            )
        if moved:
            by_change.setdefault(moved, []).append(server)
    return [f"{', '.join(servers)}: {moved}" for moved, servers in by_change.items()]


def at(time: float) -> str:
    return f"{datetime.fromtimestamp(time):%H:%M:%S}"


def count(failures: dict[str, float]) -> str:
    total = sum(failures.values())
    if not total:
        return "none"
    kinds = ", ".join(f"{kind} {value:,.0f}" for kind, value in failures.items())
    return f"{total:,.0f} ({kinds})"


def marks_html(prometheus: Prometheus, found: list[Mark]) -> str:
    """The runs and the restarts in the window, each with the requests that failed in it."""
    rows = []
    for run in sorted((m for m in found if m.annotation == RUNS), key=lambda m: m.start):
        failures = failed(prometheus, (), run.start, run.end)
        rows.append(("load-test run", f"{at(run.start)} to {at(run.end)}", "", count(failures)))
    for change in changes(found):
        started = first_start(prometheus, change)
        since = started - BEFORE_START
        failures = failed(prometheus, change.servers, since, change.end)
        what = settings_changed(prometheus, change, since) or ["no setting changed"]
        rows.append((
            f"{', '.join(change.servers)} restarted",
            f"{at(started)} (marked to {at(change.end)})",
            "; ".join(what),
            count(failures),
        ))  # fmt: skip
    if not rows:
        return '<p class="meta">No load-test run and no server restart in this window.</p>'
    widths = {"mark": 22, "when": 16, "what changed": 37, "failed requests in it": 25}
    head = "".join(f'<th style="width:{w}%">{h}</th>' for h, w in widths.items())
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<h2>Runs and changes</h2><table class="data marks"><tr>{head}</tr>{body}</table>'


def legend(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(annotation, colour) of each annotation the charts shade."""
    return [(a["name"], a.get("iconColor", "grey")) for a in dashboard.get("annotations", {}).get("list", [])
            if a.get("target", {}).get("expr")]  # fmt: skip
