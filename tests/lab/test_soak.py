"""The soak's verdict: a figure still growing in the run's second half is a leak; one that stopped,
a pool filled to the size its settings give."""

from __future__ import annotations

from echolab.lab.soak import Footprint, Soaked, row
from echolab.load.bench_result import UNMEASURED


def soaked(threads: list[int], rss: list[float] | None = None) -> Soaked:
    memory = rss or [40.0] * len(threads)
    samples = [
        Footprint(30.0 + 60 * i, m, 20, t) for i, (t, m) in enumerate(zip(threads, memory, strict=True))
    ]
    return Soaked("threaded-http", samples, after=samples[-1])


def test_a_pool_that_filled_early_and_held_is_not_a_leak() -> None:
    # ECHO_OFFLOAD=thread: the executor fills to its bound by the middle of the run, then holds.
    filled = soaked([35, 50, 58, 58, 58, 58])
    assert filled.growth() == []
    assert filled.judged() == [
        ("threads 35 -> 58, none since 210 s: a pool filled to its size, not a leak", True)
    ]
    assert "a pool filled to its size, not a leak" in row(filled)


def test_what_still_grows_in_the_second_half_is_a_leak() -> None:
    leaking = soaked([35, 40, 45, 50, 55, 60], rss=[40.0, 50.0, 60.0, 70.0, 80.0, 90.0])
    assert leaking.growth() == ["memory 40 -> 90 MiB", "threads 35 -> 60"]
    assert soaked([35, 36, 35, 37, 36, 35]).judged() == []


def test_a_server_that_failed_shows_unmeasured_figures_and_why() -> None:
    why = "async server exited with 2 while starting; it logged: cannot start"
    assert row(Soaked("async", failure=why)) == f"| async | {' | '.join([UNMEASURED] * 4)} | failed: {why} |"
