"""The Grafana dashboards as a test sees them: "does every panel show data".

Shared by test_monitoring.py (a Prometheus over local processes) and
stack/check_stack.py (the Prometheus of the docker compose stack): a panel
whose query returns nothing is a broken panel, whichever Prometheus it asks.
So is one that shows some servers but not another that exports what it
reads: the panels cover every server through the ``server`` variable.
Reading the JSON and resolving its variables is the package's
(:mod:`echolab.dashboards.panels`), as the run report does it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echolab.catalogue import SERVERS
from echolab.dashboards.panels import (
    NoData,
    all_panels,
    queries,
    query_panels,
    resolve_variables,
    substitute,
)
from echolab.dashboards.panels import load as load_dashboard
from echolab.dashboards.prometheus import Prometheus
from echolab.metrics import METRICS

from .waiting import poll_until

__all__ = [
    "DASHBOARDS",
    "Prometheus",
    "all_panels",
    "load_dashboard",
    "panels_without_data",
    "query_panels",
    "split_row",
    "wait_for_every_panel",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
# What not every server exports (the metrics catalogue says who does): a query
# that reads any of it shows only the servers that export it.
PARTIAL = re.compile(
    r"\b(" + "|".join(m.name for m in METRICS if m.side == "server" and len(m.servers) < len(SERVERS)) + r")"
)


def split_row(dashboard: dict[str, Any], title: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dashboard without the row ``title`` and its panels, and with only them."""
    inside, outside, row = [], [], ""
    for panel in dashboard.get("panels", []):
        row = panel.get("title", "") if panel.get("type") == "row" else row
        (inside if row == title else outside).append(panel)
    return {**dashboard, "panels": outside}, {**dashboard, "panels": inside}


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (NaN, from a histogram with no observations, is no data)."""
    return any(series["value"][1] not in ("NaN", "+Inf", "-Inf") for series in result)


def servers_shown(result: list[dict[str, Any]]) -> set[str]:
    """The servers a query's series are about (their ``server`` label), with data."""
    return {
        series["metric"].get("server", "")
        for series in result
        if series["value"][1] not in ("NaN", "+Inf", "-Inf")
    } - {""}


def panels_without_data(
    prometheus: Prometheus, dashboard: dict[str, Any], window: str, servers: tuple[str, ...] = ()
) -> list[str]:
    """The queries that return no data now, with the variables resolved; empty if every panel has data.

    A query whose series are per server must also show each of ``servers``,
    unless it reads a metric that not every server exports.
    """
    try:
        values = resolve_variables(prometheus, dashboard, window)
    except NoData as exc:
        return [str(exc)]
    missing = []
    for name, expr in queries(dashboard):
        concrete = substitute(expr, values)
        result = prometheus.query(concrete)
        shown = servers_shown(result)
        if not has_data(result):
            missing.append(f"{name}: {concrete}")
        elif shown and not PARTIAL.search(expr) and not set(servers) <= shown:
            missing.append(f"{name}: no {sorted(set(servers) - shown)} in {concrete}")
    return missing


def wait_for_every_panel(
    prometheus: Prometheus,
    dashboard: dict[str, Any],
    window: str,
    deadline: float,
    servers: tuple[str, ...] = (),
    interval: float = 1.0,
    context: Callable[[], str] = str,
) -> None:
    """Poll until every panel shows data, for each of ``servers`` it applies to; fail with the queries
    that do not (and ``context()``, the logs behind them) after ``deadline`` seconds."""
    poll_until(
        lambda: "\n".join(panels_without_data(prometheus, dashboard, window, servers)),
        lambda missing: not missing,
        what=f"every one of the {len(queries(dashboard))} queries of {dashboard['title']!r} returning data",
        timeout=deadline,
        interval=interval,
        context=context,
    )
