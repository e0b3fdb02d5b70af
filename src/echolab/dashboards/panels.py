"""The dashboards' JSON as a reader sees it: panels, their queries, the variables Grafana substitutes.

The tests and the run report read the committed files, the very JSON
Grafana provisions, not the builder's objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .prometheus import Prometheus

Dashboard = dict[str, Any]
# The annotations both dashboards carry, by name: the report finds its window and its marks by them.
RUNS = "Load test runs"
RESTARTS = "Server restarts"
LABEL_VALUES = re.compile(r"label_values\((?:(.*),\s*)?(\w+)\)")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class NoData(Exception):
    """A query variable found no values: every panel that uses it is empty."""


def load(path: Path) -> Dashboard:
    dashboard = json.loads(path.read_text())
    assert isinstance(dashboard, dict), path
    return dashboard


def all_panels(dashboard: Dashboard) -> Iterator[dict[str, Any]]:
    """Every panel in order, rows and those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: Dashboard) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard) if p.get("type") not in ("row", "text"))


def annotation_queries(dashboard: Dashboard) -> list[dict[str, Any]]:
    """The annotation queries (Grafana adds its built-in one on load: it is not in the file)."""
    return [a for a in dashboard.get("annotations", {}).get("list", []) if a.get("target", {}).get("expr")]


def queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(which panel or annotation and query, PromQL with Grafana variables) for every query."""
    found = [
        (f"panel {panel['id']} {panel.get('title')!r} {target['refId']}", target["expr"])
        for panel in query_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [(f"annotation {a['name']!r}", a["target"]["expr"]) for a in annotation_queries(dashboard)]
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables (``$name``, ``${name}``) replaced by ``values``; an unknown one is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"unknown variable ${name} in {expr}")
        return values[name]

    return VARIABLE.sub(value, expr)


def resolve_variables(prometheus: Prometheus, dashboard: Dashboard, window: str) -> dict[str, str]:
    """What Grafana would substitute for each variable, with "All" selected; query variables ask Prometheus.

    ``window`` stands for every rate window ($interval, $__rate_interval).
    Raises NoData for a query variable that finds nothing.
    """
    values = {"__rate_interval": window, "__interval": window, "__range": "1m"}
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable["type"]
        if kind == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.fullmatch(query.strip())
            if match is None:
                raise ValueError(f"variable {name}: only label_values(...) is supported: {query}")
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
            raise ValueError(f"variable {name}: type {kind} is not supported")
    return values


def variable_values(prometheus: Prometheus, dashboard: Dashboard, name: str, window: str) -> list[str]:
    """Every value a multi-value variable takes (for a panel repeated over it)."""
    values = resolve_variables(prometheus, dashboard, window)
    return values[name].split("|")
