"""The lab's fixtures: two small demo runs, shared by the demo's and the comparison's tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from echolab import scenarios
from echolab.lab import demo
from echolab.scenarios import Scenario
from echolab.settings import DemoSettings

# Scenarios of the test's own: adding one to SCENARIOS must be all it takes. Requests long
# enough that the servers hold their bound while the rest of the suite keeps the machine busy.
FAST = Scenario("fast", "40 ms of awaited IO per request", ("--delay-ms", "40"), 40.0)
SLOWER = Scenario("slower", "120 ms of awaited IO per request", ("--delay-ms", "120"), 120.0)
SMALL = DemoSettings(
    scenario=("fast", "slower"),
    servers=("threaded", "async", "serial"),
    levels=(1, 4, 8),
    other_levels=(4,),
    rates=(100,),
    duration=0.4,
    other_duration=0.4,
    warmup=0.1,
)


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two demos into one folder: both test scenarios, then a smaller one (fast only, async only)."""
    out = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(scenarios.SCENARIOS, FAST.name, FAST)
        patch.setitem(scenarios.SCENARIOS, SLOWER.name, SLOWER)
        assert demo.run(dataclasses.replace(SMALL, out=out)) == 0
        second = DemoSettings(
            scenario=("fast",), servers=("async",), levels=(4,), open_loop=False, duration=0.3, warmup=0.1,
            out=out,
        )  # fmt: skip
        assert demo.run(second) == 0
    first, latest = sorted(out.glob("demo-*"))
    return first, latest
