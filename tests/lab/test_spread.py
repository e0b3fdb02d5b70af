"""Several demo runs as a median and a range: what the README quotes."""

from __future__ import annotations

from pathlib import Path

from support.parallel import with_demo_runs

from echolab.lab import history, spread


@with_demo_runs
def test_several_runs_spread_into_a_median_and_range_of_what_each_measured(
    demo_runs: tuple[Path, Path],
) -> None:
    first, latest = demo_runs
    runs = [history.load(first), history.load(latest)]
    lines = spread.table(runs).splitlines()
    loads = ", ".join(f"{run.machine['load_average'][0]:.2f}" for run in runs)
    assert lines[0] == f"2 runs; load average at their start: {loads}"
    fast = lines[lines.index("fast (closed loop)") :]
    # Only what both runs measured: the second ran the async server alone, in the first section.
    assert [line.split(" | ")[0] for line in fast if line.startswith("| async")] == ["| async"]
    assert not any(line.startswith("| threaded") for line in lines)
    assert spread.spread([100.0, 300.0, 120.0]) == "120 (100\N{EN DASH}300)"
    assert spread.main([str(first / "nosuch")]) == 2
