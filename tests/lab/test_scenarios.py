"""The scenarios: presets every server accepts, whose idle request time is what they say."""

from __future__ import annotations

import pytest

from echolab import catalogue, settings
from echolab.cli import build_parser
from echolab.lab.scenarios import SCENARIOS, Scenario


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS)
def test_every_server_accepts_the_flags_it_reads(scenario: Scenario) -> None:
    for server in catalogue.SERVERS:
        flags = scenario.options_for(server)
        args = build_parser().parse_args(["serve", server.name, *flags])
        work = settings.from_namespace(server.settings, args)
        # The bound's D: one request's work on an idle server.
        assert work.cpu_ms + work.blocking_ms + work.delay_ms == scenario.delay_hint_ms
        # A flag is left out only where the server has no such setting.
        dropped = set(scenario.options[::2]) - set(flags[::2])
        assert dropped.isdisjoint(option.flag for option in settings.options(server.settings))


def test_offloading_applies_to_the_event_loop_servers_only() -> None:
    offload = SCENARIOS["offload"]
    readers = {s.name for s in catalogue.SERVERS if "--offload" in offload.options_for(s)}
    assert readers == {"async", "async-http"}
