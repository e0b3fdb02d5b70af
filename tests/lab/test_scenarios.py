"""The scenarios: presets every server accepts, whose idle request time is what they say."""

from __future__ import annotations

import pytest

from echolab import catalogue, settings
from echolab.cli import build_parser
from echolab.scenarios import SCENARIOS, Scenario
from echolab.settings import WORK_MODEL


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS)
def test_every_server_accepts_the_flags_it_reads(scenario: Scenario) -> None:
    for server in catalogue.SERVERS:
        flags = scenario.options_for(server)
        # A database's scenario runs with the lab's database (lab/dependencies.py gives its URL).
        url = ("--database-url", "postgresql://lab@127.0.0.1/lab") if scenario.io == "postgres" else ()
        args = build_parser().parse_args(["serve", server.name, *flags, *url])
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


def test_a_scenario_sets_the_whole_work_model() -> None:
    """What a preset leaves out is at its default: a scenario means the same whatever ran before."""
    every = {option.name for s in catalogue.SERVERS for option in settings.options(s.settings)}
    assert set(WORK_MODEL) <= every
    named = {flag.removeprefix("--").replace("-", "_") for s in SCENARIOS.values() for flag in s.options[::2]}
    assert named <= set(WORK_MODEL), "a preset sets only work settings, each of which it then decides"
    io = SCENARIOS["io"]
    for server in catalogue.SERVERS:
        work = settings.from_environment(server.settings, io.environment(server))
        assert work == settings.from_environment(server.settings, {}), server.name
