"""The dashboards as code: the committed JSON is what the builder makes, and Grafana's own SDK reads it back.

Nobody here can run Grafana, so its Foundation SDK stands in for it: its
model of a dashboard must read every committed file back to the same JSON,
every query decoded as a Prometheus query.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from echolab.catalogue import SERVERS
from echolab.dashboards import build
from echolab.dashboards.grafana import DATASOURCE_UID, server_pattern, to_json
from echolab.dashboards.panels import query_panels

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "grafana" / "dashboards"
COMMITTED = sorted(FOLDER.glob("*.json"))


def test_committed_json_is_a_fresh_build() -> None:
    fresh = build.render()
    assert sorted(fresh) == [p.name for p in COMMITTED], "a dashboard file without a builder, or missing"
    for name, text in fresh.items():
        assert json.loads((FOLDER / name).read_text()) == json.loads(text), f"{name}: run `make dashboards`"


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_round_trips_through_the_sdk_model(path: Path) -> None:
    register_default_plugins()  # the panel and query decoders: without them, options stay plain dicts
    committed = json.loads(path.read_text())
    model = dm.Dashboard.from_json(committed)
    assert json.loads(to_json(model)) == committed
    for panel in model.panels or []:
        if isinstance(panel, dm.RowPanel) or panel.type_val == "text":
            continue
        assert panel.datasource is not None and panel.datasource.uid == DATASOURCE_UID, panel.title
        for target in panel.targets or []:
            assert isinstance(target, pm.Dataquery), f"{panel.title}: {type(target).__name__}"


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_time_series_has_the_catalogue_colours(path: Path) -> None:
    wanted = {server_pattern(s.name): s.color for s in SERVERS}
    for panel in query_panels(json.loads(path.read_text())):
        if panel["type"] != "timeseries":
            continue
        colours = {
            override["matcher"]["options"]: prop["value"]["fixedColor"]
            for override in panel["fieldConfig"]["overrides"]
            for prop in override["properties"]
            if prop["id"] == "color"
        }
        assert colours == wanted, panel["title"]
