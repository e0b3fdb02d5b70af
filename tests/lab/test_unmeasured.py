"""What was not measured never looks like a number, and a verdict speaks only of what was measured."""

from __future__ import annotations

from dataclasses import replace

from echolab.lab.compare import cells
from echolab.lab.report import Section, failures_line, finding, verdict
from echolab.lab.results import Row, columns, errors_cell
from echolab.lab.sweep import MIN_REQUESTS, long_enough
from echolab.load.bench_result import UNMEASURED

IO = Section("io", "100 ms of awaited IO per request", "closed", 100.0)


def row(server: str, connections: int, fraction: float = 1.0, **changes: object) -> Row:
    bound = connections / 0.1
    measured = Row(
        server=server, framing="lines", connections=connections, connected=connections, delay_ms=100.0,
        seconds=1.0, requests=round(bound * fraction), throughput=bound * fraction,
        latency_ms={"p50": 100.0, "p99": 101.0}, bound=bound, bound_fraction=fraction,
    )  # fmt: skip
    return replace(measured, **changes)


def failed(server: str, connections: int, why: str) -> Row:
    return Row.failed(why, server=server, framing="lines", connections=connections, delay_ms=100.0)


def test_a_server_cut_off_is_said_to_be_and_its_peak_set_against_no_other() -> None:
    threaded = [row("threaded", 1), row("threaded", 100), row("threaded", 1000, 0.95)]
    cut_short = [row("async", 1)]
    sentence = finding(IO, threaded + cut_short, {"async": "cut off by SIGINT"})
    assert "async holds at every level measured, up to 1 connection, then cut off by SIGINT" in sentence
    assert "peak" not in sentence
    assert verdict("async", cut_short, "cut off by SIGINT") == (
        "async: holds at every level measured, up to 1 connection (100% of the bound, p99 101 ms); "
        "then cut off by SIGINT."
    )
    # Both sweeps whole: the peaks are compared.
    assert "the async peak is 1/950 of the threaded one" in finding(IO, threaded + cut_short)


def test_a_failed_level_is_a_failure_in_the_verdict_and_unmeasured_in_every_table() -> None:
    why = "threaded exited with -9 mid-level; it logged: serving"
    series = [row("threaded", 100), failed("threaded", 1000, why)]
    assert (
        verdict("threaded", series)
        == f"threaded: holds up to 100 connections; at 1,000 connections it failed: {why}."
    )
    assert "holds up to 100 connections, then fails at 1,000 connections" in finding(IO, series)
    cells_of = {c.title: c.text(series[1]) for c in columns(series)}
    assert cells_of["conns"] == "1,000"
    assert cells_of["failed"] == why
    assert {cells_of[t] for t in ("req/s", "of bound", "p50 ms", "p99 ms", "server CPU")} == {UNMEASURED}
    # A table without a failure has no column for one.
    assert "failed" not in [c.title for c in columns(series[:1])]
    assert verdict("async", [failed("async", 1, "async server exited with 2 while starting")]) == (
        "async: not measured; at 1 connection it failed: async server exited with 2 while starting."
    )


def test_an_unmeasured_percentile_shows_as_unmeasured_in_the_table_and_in_compare() -> None:
    nothing = row("async", 10, 0.0, requests=0, latency_ms={"p50": None, "p99": None}, bound_fraction=None)
    assert {c.title: c.text(nothing) for c in columns([nothing])}["p99 ms"] == UNMEASURED
    assert cells(row("async", 10), nothing)[3:] == ["101.0", UNMEASURED, UNMEASURED]
    assert cells(row("async", 10), failed("async", 10, "gone")) == [
        "100", UNMEASURED, UNMEASURED, "101.0", UNMEASURED, UNMEASURED,
    ]  # fmt: skip


def test_an_open_loop_level_whose_requests_went_unanswered_says_so() -> None:
    # 20,000 req/s offered for a second, 45 answered: the errors column is not blank.
    swamped = row(
        "threaded", 400, mode="open", rate=20000.0, requests=45, throughput=45.0, bound_fraction=0.002
    )
    assert errors_cell(swamped) == "19,955 unanswered"
    assert swamped.trouble == "most requests failed or went unanswered (19,955 of 20,000)"
    assert "most requests failed" in verdict("threaded", [swamped])
    # In a closed loop: most of its requests failed.
    failing = row("async", 10, requests=20, errors={"timeout": 60})
    assert failing.trouble == "most requests failed (60 of 80)"
    assert errors_cell(failing) == "60"
    assert row("async", 10).mostly_failed is None


def test_a_level_runs_until_the_bound_gives_enough_replies_to_count() -> None:
    # 1 connection at 100 ms: 1 s gives ten replies, a tenth of the bound each.
    assert long_enough(1.0, 1, 100.0) * 1000 / 100.0 == MIN_REQUESTS
    assert long_enough(1.0, 1000, 100.0) == 1.0
    assert long_enough(1.0, 1, 0.0) == 1.0


def test_the_failures_are_told_in_one_line() -> None:
    told = failures_line(
        [
            {"section": "io-closed", "server": "threaded", "level": 1000, "why": "exited with -9 mid-level"},
            {"section": "io-closed", "server": "async", "level": None, "why": "did not exit within 1s"},
        ]
    )
    assert told == (
        "2 failures: threaded (io-closed, level 1,000): exited with -9 mid-level; "
        "async (io-closed): did not exit within 1s"
    )
    assert "\n" not in told
