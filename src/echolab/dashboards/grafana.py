"""The dashboards' building blocks, over grafana-foundation-sdk: one function per panel kind.

Every panel, query, variable and annotation gets the one provisioned data
source; every time series gets each server's colour from the catalogue (the
threaded family warm, the async family cool, as in the demo report); metric
names come from the metrics catalogue. So a panel is a title, a unit, a
description and its queries, and adding one is a few lines in a dashboard's
list of rows. Layout is the SDK's own flow: a row, then panels left to
right, a new line when 24 columns are full.

The SDK writes Grafana's classic (v1) dashboard JSON, schema 42 (Grafana 12).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, table, text, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models.text import TextMode

from ..catalogue import SERVERS
from ..metrics import spec
from .panels import RESTARTS, RUNS

DATASOURCE_UID = "echolab-prometheus"  # grafana/provisioning/datasources/prometheus.yml (a test compares)
DATASOURCE = cm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
SERVER = 'server=~"$server"'  # the server variable, in a selector
WINDOW = "$interval"  # the rate window variable
# Grafana's default height is 9 grid units of 30 px; 8 leaves room for a legend table of four servers.
HEIGHT = 8
LEGEND_CALCS = ["mean", "max", "lastNotNull"]
# The Locust processes whose counts are the run's: a master (its workers' total) or a single local one.
NOT_WORKERS = f'{spec("echo_client").exposed}{{role!="worker"}}'
HEATMAP_SCHEME = "Viridis"  # neither family's colours: every server's heatmap is drawn alike

Panel = timeseries.Panel | heatmap.Panel | table.Panel | text.Panel


def metric(name: str) -> str:
    """A metric's name as PromQL reads it, from the catalogue (a KeyError for a name it lacks)."""
    return spec(name).exposed


def bucket(name: str) -> str:
    """A histogram's ``_bucket`` series."""
    histogram = spec(name)
    assert histogram.kind == "histogram", name
    return histogram.name + "_bucket"


def exporters(name: str) -> str:
    """The servers that export a metric, for a description: 'threaded, async'."""
    return ", ".join(spec(name).servers)


def server_rate(name: str, labels: str = "", by: str = "server") -> str:
    """Per-second rate of a counter, summed by ``by``, over the servers the variable selects."""
    return f"sum by ({by}) (rate({metric(name)}{{{SERVER}{labels}}}[{WINDOW}]))"


def quantile(q: float, name: str) -> str:
    """A quantile per server from a histogram's buckets."""
    return f"histogram_quantile({q}, sum by (server, le) (rate({bucket(name)}{{{SERVER}}}[{WINDOW}])))"


@dataclass(frozen=True)
class Query:
    """A PromQL expression and the legend Grafana shows for each of its series."""

    expr: str
    legend: str
    instant: bool = False


def _target(query: Query, ref_id: str, fmt: pm.PromQueryFormat) -> prom.Dataquery:
    target = (
        prom.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .editor_mode(pm.QueryEditorMode.CODE)
        .format(fmt)
    )
    return target.instant() if query.instant else target.range()


def _fixed_colour(colour: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(
        id_val="color", value=dm.FieldColor(mode=dm.FieldColorModeId.FIXED, fixed_color=colour)
    )


def server_pattern(name: str) -> str:
    """The display names of a server's series: its name, alone or before a space ('async p99')."""
    return f"^{name}( .*)?$"


def timeseries_panel(
    title: str,
    unit: str,
    description: str,
    queries: Sequence[Query],
    *,
    dashed: str = "",
    dotted: str = "",
    soft_max: float | None = None,
    limit: float | None = None,
) -> timeseries.Panel:
    """Lines over time, each server in its catalogue colour.

    ``dashed``, ``dotted``: regexes of the series drawn so; ``soft_max``: the least
    the y axis shows; ``limit``: a value drawn as a dashed red line (a saturation).
    """
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .line_width(1)
        .fill_opacity(0)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs(LEGEND_CALCS)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if soft_max is not None:
        panel = panel.axis_soft_max(soft_max)
    if limit is not None:
        steps = [dm.Threshold(value=None, color="transparent"), dm.Threshold(value=limit, color="red")]
        panel = panel.thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
        dashed_line = cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
        panel = panel.thresholds_style(dashed_line)
    for ref_id, query in zip(ref_ids(), queries, strict=False):
        panel = panel.with_target(_target(query, ref_id, pm.PromQueryFormat.TIME_SERIES))
    for server in SERVERS:
        panel = panel.override_by_regexp(server_pattern(server.name), [_fixed_colour(server.color)])
    for pattern, style in ((dashed, cm.LineStyle(fill="dash", dash=[10, 10])),
                           (dotted, cm.LineStyle(fill="dot", dash=[0, 10]))):  # fmt: skip
        if pattern:
            panel = panel.override_by_regexp(
                pattern, [dm.DynamicConfigValue(id_val="custom.lineStyle", value=style)]
            )
    return panel


def heatmap_panel(title: str, description: str, query: Query, *, repeat: str = "") -> heatmap.Panel:
    """A histogram's buckets over time (the query: ``le`` per series); ``repeat``: one per variable value."""
    panel = (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_target(query, "A", pm.PromQueryFormat.HEATMAP))
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
        # Every colour field: the model's defaults (fill "", exponent 0, steps 0) are not Grafana's.
        .color(
            heatmap.HeatmapColorOptions()
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme(HEATMAP_SCHEME)
            .fill("dark-orange")
            .scale(hm.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .cell_values(heatmap.CellValues().unit("reqps"))
        .show_legend()
    )
    panel = panel.unit("reqps")
    if repeat:
        panel = panel.repeat(repeat).repeat_direction("h").max_per_row(len(SERVERS))
    return panel


def table_panel(
    title: str, description: str, query: Query, columns: Sequence[str], rename: dict[str, str]
) -> table.Panel:
    """An instant query as a table of its labels: ``columns`` in this order; where it was scraped, hidden."""
    hidden = {"Time": True, "Value": True, "__name__": True, "job": True, "instance": True, "pod": True}
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit("string")
        .with_target(_target(Query(query.expr, query.legend, instant=True), "A", pm.PromQueryFormat.TABLE))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": hidden,
                    "indexByName": {column: i for i, column in enumerate(columns)},
                    "renameByName": rename,
                },
            )
        )
    )


def text_panel(title: str, markdown: str) -> text.Panel:
    return text.Panel().title(title).mode(TextMode.MARKDOWN).content(markdown)


def ref_ids() -> Iterator[str]:
    """A, B, C...: Grafana's names for a panel's queries."""
    return (chr(ord("A") + i) for i in range(26))


# --- variables and annotations --------------------------------------------------------------


def server_variable() -> db.QueryVariable:
    """Which servers every panel shows: all by default (Grafana's regex of every value)."""
    query = f"label_values({metric('echo_server')}, server)"
    return (
        db.QueryVariable("server")
        .label("server")
        .datasource(DATASOURCE)
        .query(query)
        .definition(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def interval_variable() -> db.IntervalVariable:
    """The rate window: auto, at least 15 s (three scrapes of the stack's 5 s)."""
    return (
        db.IntervalVariable("interval")
        .label("rate window")
        .values("15s,30s,1m,2m,5m")
        .auto(True)
        .min_interval("15s")
        .step_count(60)
        .current(dm.VariableOption(selected=True, text="auto", value="$__auto_interval_interval"))
    )


def load_test_runs() -> db.AnnotationQuery:
    """When a Locust run started and stopped: a region on every panel while a master or local process runs."""
    running = f"{metric('echo_client_running')} * on (job, instance) group_left {NOT_WORKERS}"
    return annotation(RUNS, Query(f"max({running}) > 0", "Locust run"), "#8e44ad")


RESTARTED = "server:echo_restarted:30s"  # prometheus/rules.yml


def server_restarts(selector: str = "") -> db.AnnotationQuery:
    """Where a server was down or had just restarted (``make scenario``, ``make up``, a crash): its switch."""
    return annotation(RESTARTS, Query(f"{RESTARTED}{{{selector}}}", "{{server}} restarted"), "#e67e22")


def annotation(name: str, query: Query, colour: str) -> db.AnnotationQuery:
    """Regions on every panel's time axis where ``query`` is 1 or more: Grafana joins consecutive samples."""
    return (
        db.AnnotationQuery()
        .name(name)
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color(colour)
        .target(_target(query, "Anno", pm.PromQueryFormat.TIME_SERIES))
        .title_format(query.legend)
        .step("5s")
    )


# --- the dashboard --------------------------------------------------------------------------


@dataclass
class Row:
    """A titled row of panels, side by side (``widths`` in grid columns: even by default), then wrapping."""

    title: str
    panels: list[Panel]
    widths: list[int] = field(default_factory=list)
    height: int = HEIGHT


def dashboard(
    uid: str,
    title: str,
    description: str,
    rows: Sequence[Row],
    *,
    variables: Sequence[db.QueryVariable | db.IntervalVariable] = (),
    annotations: Sequence[db.AnnotationQuery] = (),
) -> dm.Dashboard:
    """The dashboard, read-only (provisioned from files), panels numbered 1..n in order."""
    builder = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["echolab"])
        .readonly()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-15m", "now")
        .timezone(cm.TimeZoneBrowser)
        .refresh("5s")
        .timepicker(db.TimePicker().refresh_intervals(["5s", "10s", "30s", "1m", "5m"]))
    )
    for variable in variables:
        builder = builder.with_variable(variable)
    for item in annotations:
        builder = builder.annotation(item)
    for row in rows:
        if row.title:
            builder = builder.with_row(db.Row(row.title))
        widths = row.widths or [24 // len(row.panels)] * len(row.panels)
        for panel, width in zip(row.panels, widths, strict=True):
            builder = builder.with_panel(panel.span(width).height(row.height))
    model = builder.build()
    for number, built in enumerate(model.panels or [], start=1):
        built.id_val = number
    for model_variable in model.templating.list_val or []:
        if model_variable.type_val == dm.VariableType.INTERVAL:
            # An auto window follows the time range; IntervalVariable has no builder method for it.
            model_variable.refresh = dm.VariableRefresh.ON_TIME_RANGE_CHANGED
    return model


def to_json(model: Any) -> str:
    """Sorted keys, two-space indent: stable diffs of the committed files."""
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"
