"""What "holds" means: the verdicts of the demo rest on it."""

from __future__ import annotations

from dataclasses import replace

from echolab.lab.report import Section, finding, scaling, verdict
from echolab.lab.results import Row


def row(connections: int, fraction: float, *, seconds: float = 1.0, mode: str = "closed", p99: float = 101.0,
        errors: int = 0) -> Row:  # fmt: skip
    bound = connections / 0.1
    return Row(
        server="s", framing="lines", connections=connections, connected=connections, delay_ms=100.0,
        seconds=seconds, requests=round(bound * fraction * seconds), throughput=bound * fraction,
        latency_ms={"p50": 100.0, "p99": p99}, errors={"timeout": errors} if errors else {}, bound=bound,
        bound_fraction=fraction, mode=mode, rate=bound if mode == "open" else 0.0,
    )  # fmt: skip


def test_one_reply_short_in_a_short_window_still_holds() -> None:
    # 1 connection, 1 s, 100 ms: 9 replies instead of 10 is the window, not the server.
    assert row(1, 0.89).holds
    assert not row(1, 0.75).holds
    # Over a thousand connections the counting evens out: 89% is 89%.
    assert not row(1000, 0.89).holds
    assert row(1000, 0.9).holds


def test_errors_and_an_open_loops_tail_break_a_level() -> None:
    assert not row(100, 1.0, errors=20).holds
    assert row(100, 1.0, mode="open", p99=180).holds
    assert not row(100, 1.0, mode="open", p99=250).holds


def test_the_verdict_names_the_first_level_that_does_not_hold_and_why() -> None:
    series = [row(100, 1.0, mode="open"), row(500, 1.0, mode="open", p99=419), row(1000, 0.3, mode="open")]
    assert verdict("threaded", series) == (
        "threaded: holds up to 1,000 req/s offered; at 5,000 req/s offered its p99 reaches 419 ms, "
        "over 2 times the work (100% of the offered rate)."
    )


def test_the_finding_says_when_throughput_does_not_follow_the_load() -> None:
    """A blocked event loop: a hundred times the connections, the same requests/s."""
    flat = [row(1, 1.0), row(100, 0.01)]
    rising = [row(1, 1.0), row(100, 1.0)]
    assert scaling(flat) == "10 req/s at 1 connection, 10 at 100 connections, whatever the concurrency"
    assert scaling(rising) == "10 req/s at 1 connection, 1,000 at 100 connections"


def test_the_finding_compares_threads_and_asyncio_within_one_protocol() -> None:
    section = Section("io", "100 ms of IO", "closed", 100.0)
    rows = [replace(r, server=server) for server, fraction in (("threaded", 0.2), ("async", 1.0))
            for r in (row(1, 1.0), row(1000, fraction))]  # fmt: skip
    rows += [replace(r, server="async-http", framing="http") for r in (row(1, 1.0), row(1000, 0.001))]
    assert finding(section, rows) == (
        "100 ms of IO: threaded holds up to 1 connection (10 req/s at 1 connection, 2,000 at 1,000 "
        "connections), async holds at every level, up to 1,000 connections (10 req/s at 1 connection, "
        "10,000 at 1,000 connections): the async peak is 5.00x the threaded one; over HTTP, async-http "
        "holds up to 1 connection (10 req/s at 1 connection, 10 at 1,000 connections, whatever the "
        "concurrency)."
    )
