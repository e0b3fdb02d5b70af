"""The manual's generated tables: every setting (docs/configuration.md), and every metric (docs/metrics.md).

``echolab config --markdown`` and ``echolab config --metrics`` print them;
a test keeps the manual in step with what they print.
"""

from __future__ import annotations

from .catalogue import SERVERS
from .metrics import METRICS
from .settings import (
    BenchSettings,
    CompareSettings,
    DemoSettings,
    DownstreamSettings,
    Option,
    ReportSettings,
    Settings,
    SoakSettings,
    SuiteSettings,
    options,
)

LAB_COMMANDS: tuple[tuple[str, type[Settings]], ...] = (
    ("downstream", DownstreamSettings),
    ("bench", BenchSettings),
    ("demo", DemoSettings),
    ("compare", CompareSettings),
    ("suite", SuiteSettings),
    ("report", ReportSettings),
    ("soak", SoakSettings),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(command: str, option: Option, default: str) -> str:
    meaning = option.spec.help
    if option.spec.choices:
        meaning += ": " + ", ".join(option.spec.choices)
    return f"| {command} | `{option.flag}` | `{option.env}` | {_cell(default)} | {_cell(meaning)} |"


def config_table() -> str:
    """A row per setting: the command that reads it (for ``serve``, which servers), flag, env var, default."""
    rows = ["| command | flag | env var | default | meaning |", "| --- | --- | --- | --- | --- |"]
    readers: dict[str, tuple[Option, list[str]]] = {}
    for server in SERVERS:
        for option in options(server.settings):
            readers.setdefault(option.name, (option, []))[1].append(server.name)
    for name, (option, names) in readers.items():
        command = "serve" if len(names) == len(SERVERS) else "serve " + ", ".join(names)
        if option.spec.per_server:
            default = ", ".join(f"{getattr(s, name)} ({s.name})" for s in SERVERS if s.name in names)
        else:
            default = option.describe_default(option.default)
        rows.append(_row(command, option, default))
    for command, cls in LAB_COMMANDS:
        for option in options(cls):
            rows.append(_row(command, option, option.describe_default(option.default)))
    return "\n".join(rows)


def metrics_table() -> str:
    """One row per metric, the servers' and the load generators'."""
    rows = ["| metric | type | labels | exported by | meaning |", "| --- | --- | --- | --- | --- |"]
    for metric in METRICS:
        if metric.side == "client":
            by = "every Locust process"
        elif metric.side == "downstream":
            by = "echolab downstream"
        elif len(metric.servers) == len(SERVERS):
            by = "every server"
        else:
            by = ", ".join(metric.servers)
        if metric.only_when:
            by += ", " + metric.only_when
        labels = ", ".join(f"`{label}`" for label in metric.labels)
        rows.append(f"| `{metric.exposed}` | {metric.kind} | {labels} | {by} | {_cell(metric.help)} |")
    return "\n".join(rows)
