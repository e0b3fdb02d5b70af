"""The Grafana dashboards as a test sees them: panels, queries, variables, and "does it show data".

Shared by test_monitoring.py (a Prometheus over local processes) and
stack/check_stack.py (the Prometheus of the docker compose stack): a panel
whose query returns nothing is a broken panel, whichever Prometheus it asks.
So is one that shows some servers but not another that exports what it
reads: the panels cover every server through the ``server`` variable.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from echolab.catalogue import SERVERS
from echolab.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
LABEL_VALUES = re.compile(r"label_values\((?:(.*),\s*)?(\w+)\)")
# What not every server exports (the metrics catalogue says who does): a query
# that reads any of it shows only the servers that export it.
PARTIAL = re.compile(
    r"\b(" + "|".join(m.name for m in METRICS if m.side == "server" and len(m.servers) < len(SERVERS)) + r")"
)


class Prometheus:
    """The two HTTP API calls Grafana makes for these dashboards."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, path: str, params: dict[str, str]) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/api/v1/query", {"query": expr})["result"]
        return result

    def label_values(self, label: str, selector: str | None) -> list[str]:
        values: list[str] = self._get(
            f"/api/v1/label/{label}/values", {"match[]": selector} if selector else {}
        )
        return values


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard = json.loads(path.read_text())
    assert isinstance(dashboard, dict)
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard) if p.get("type") not in ("row", "text"))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(which panel and query, PromQL with Grafana variables) for every query of every panel."""
    return [
        (f"panel {panel['id']} {panel.get('title')!r} {target['refId']}", target["expr"])
        for panel in query_panels(dashboard)
        for target in panel.get("targets", [])
    ]


class NoData(Exception):
    pass


def substitute(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown variable ${name} in {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def resolve_variables(prometheus: Prometheus, dashboard: dict[str, Any], window: str) -> dict[str, str]:
    """What Grafana would substitute for each variable; query variables are asked of Prometheus.

    ``window`` stands for every rate window ($interval, $__rate_interval):
    a few scrape intervals.
    """
    values = {"__rate_interval": window, "__interval": window, "__range": "1m"}
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable["type"]
        if kind == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.fullmatch(query.strip())
            assert match, f"variable {name}: only label_values(...) is supported here: {query}"
            selector = substitute(match.group(1), values) if match.group(1) else None
            found = prometheus.label_values(match.group(2), selector)
            if not found:
                raise NoData(f"variable {name}: {query} found nothing")
            # "All" of a multi-value variable: Grafana's regex of every value.
            values[name] = "|".join(found) if variable.get("includeAll") else found[0]
        elif kind == "interval":
            values[name] = window
        elif kind in ("textbox", "constant", "custom"):
            values[name] = str(variable["query"]).split(",")[0].strip()
        else:
            raise AssertionError(f"variable {name}: type {kind} not handled by this test")
    return values


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
) -> str:
    """Poll until every panel shows data, for each of ``servers`` it applies to; return '' or what is not."""
    end = time.monotonic() + deadline
    while True:
        missing = panels_without_data(prometheus, dashboard, window, servers)
        if not missing:
            return ""
        if time.monotonic() > end:
            total = len(queries(dashboard))
            return f"{len(missing)} of {total} queries returned no data after {deadline:.0f}s:\n" + "\n".join(
                missing
            )
        time.sleep(1)
