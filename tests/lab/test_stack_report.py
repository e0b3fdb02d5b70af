"""The run report's reading of Grafana's conventions: units, legends, overrides, runs, Markdown, tables.

The report against a real Prometheus is in test_monitoring.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from support.servers import clean_environment

from echolab.dashboards.panels import RESTARTS, RUNS
from echolab.lab.stack_marks import Change, Mark, around, changes, runs_of
from echolab.lab.stack_report import format_value, legend_name, markdown, overrides, table_html

PANEL = {
    "fieldConfig": {
        "overrides": [
            {"matcher": {"id": "byRegexp", "options": "^async( .*)?$"},
             "properties": [{"id": "color", "value": {"fixedColor": "#1f77b4", "mode": "fixed"}}]},
            {"matcher": {"id": "byRegexp", "options": ".*bound.*"},
             "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]},
        ]
    }
}  # fmt: skip


@pytest.mark.parametrize(
    ("unit", "value", "shown"),
    [
        ("s", 0.1024, "102 ms"),
        ("s", 2.5e-5, "25 µs"),
        ("s", 12.0, "12 s"),
        ("µs", 1250.0, "1.25 ms"),
        ("percentunit", 0.256, "25.6%"),
        ("reqps", 45210.0, "45.2k req/s"),
        ("reqps", 1250.0, "1,250 req/s"),
        ("bytes", 3 * 2**20, "3 MiB"),
        ("Bps", 512.0, "512 B/s"),
        ("short", 7.0, "7"),
        ("s", math.nan, "-"),
    ],
)
def test_values_in_grafanas_units(unit: str, value: float, shown: str) -> None:
    assert format_value(unit, value) == shown


def test_legend_format_takes_the_series_labels() -> None:
    labels = {"server": "async", "cpus": "1"}
    assert legend_name("{{server}} (limit {{ cpus }} CPU)", labels) == "async (limit 1 CPU)"
    assert legend_name("{{server}} {{kind}}", labels) == "async"  # a label the series lacks: empty


def test_overrides_give_colour_and_dash_by_display_name() -> None:
    assert overrides(PANEL, "async bound: users / (delay + think)") == ("#1f77b4", "dash")
    assert overrides(PANEL, "async-http achieved") == (None, "solid")  # ^async( .*)?$ is not async-http


def test_consecutive_samples_make_one_run() -> None:
    times = [0.0, 5.0, 10.0, 30.0, 35.0]
    assert list(runs_of(times, step=5.0)) == [(0.0, 10.0), (30.0, 35.0)]
    assert list(runs_of([], step=5.0)) == []


def restart(server: str, start: float, end: float) -> Mark:
    return Mark(RESTARTS, start, end, "orange", (("server", server),))


def test_overlapping_restarts_are_one_change_and_a_later_one_another() -> None:
    found = [
        restart("async", 100.0, 130.0),
        Mark(RUNS, 0.0, 500.0, "purple"),
        restart("threaded", 104.0, 134.0),  # recreated together: one switch
        restart("async", 300.0, 330.0),  # later: a change of its own
    ]
    assert changes(found) == [
        Change(100.0, 134.0, ("async", "threaded")),
        Change(300.0, 330.0, ("async",)),
    ]


def test_the_window_around_a_run_shows_a_little_before_and_after_it() -> None:
    assert around((1000.0, 2000.0), now=5000.0) == (900.0, 2100.0)  # a tenth of the run
    assert around((1000.0, 1060.0), now=5000.0) == (970.0, 1090.0)  # at least 30 s
    assert around((1000.0, 2000.0), now=2050.0) == (900.0, 2050.0)  # never past now


def test_markdown_of_the_text_panels() -> None:
    text = "Four **servers**, `echo_server_info`.\n\n* one *a*\n* two"
    assert markdown(text) == (
        "<p>Four <b>servers</b>, <code>echo_server_info</code>.</p><ul><li>one <i>a</i></li><li>two</li></ul>"
    )


def test_table_columns_follow_the_organize_transformation() -> None:
    organize = {
        "excludeByName": {"job": True},
        "indexByName": {"server": 0, "cpus": 1},
        "renameByName": {"cpus": "CPU"},
    }
    panel = {"transformations": [{"id": "organize", "options": organize}]}
    rows = [{"cpus": "1", "server": "async", "job": "echo-servers", "loop": "uvloop"}]
    assert table_html(panel, rows) == (
        '<table class="data"><tr><th>server</th><th>CPU</th><th>loop</th></tr>'
        "<tr><td>async</td><td>1</td><td>uvloop</td></tr></table>"
    )


def test_a_setting_a_server_lacks_shows_as_not_applying() -> None:
    rows = [{"server": "threaded", "model": "pool", "threads": "8"}, {"server": "async", "loop": "uvloop"}]
    html = table_html({}, rows)
    assert html.count("n/a") == 3, html  # async: model, threads; threaded: loop
    assert '<td class="na" title="does not apply to this server">n/a</td>' in html


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--since", "soon"], "not a duration"),
        (["--prometheus", "http://127.0.0.1:{port}", "--since", "1m"], "cannot query Prometheus"),
        (["--dashboards", "{tmp}", "--since", "1m"], "no dashboards"),
        # Without --since, the window is the last run's: Prometheus is asked for it first.
        (["--prometheus", "http://127.0.0.1:{port}"], "cannot query Prometheus"),
        (["--dashboards", "{tmp}"], "no dashboards"),
    ],
)
def test_a_mistake_is_one_line(args: list[str], error: str, tmp_path: Path, refused_port: int) -> None:
    argv = [a.format(port=refused_port, tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-m", "echolab", "report", *argv, "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env=clean_environment())  # fmt: skip
    assert result.returncode == 2
    assert error in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.glob("*.html"))
