"""Waiting in the tests: for a condition, never for a clock; and one scale for the servers' timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

TIMEOUT = 10.0  # generous: a broken server fails a test with a timeout instead of hanging it
# Between two looks at a condition: 10 ms at first, half as long again each time, up to a
# tenth of a second; a look (a scrape, say) costs CPU on both sides, which the suite is short of.
FIRST_PAUSE = 0.01
INTERVAL = 0.1
# The servers visit their connections' deadlines every min(1 s, timeout / 4)
# (echolab.runtime.sweep_interval), so a timeout of a few hundred milliseconds behaves as
# a minute's does, only sooner. Every timeout a test gives a server, and every pause a
# client takes against one, is written at a size that reads naturally and run at SCALE of it.
SCALE = 0.25


def scaled(seconds: float) -> float:
    """A timeout, or a client's pause measured against one, as the tests run it."""
    return seconds * SCALE


def flag(seconds: float) -> str:
    """``scaled(seconds)`` as a command-line value (``--idle-timeout``)."""
    return f"{scaled(seconds):g}"


def poll_until(
    probe: Callable[[], T],
    until: Callable[[T], object] = bool,
    *,
    what: str,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    gone: Callable[[], str] = str,
    context: Callable[[], str] = str,
) -> T:
    """Call ``probe`` until ``until`` holds for what it returns, at most ``interval`` s apart; return that.

    Fails the test with ``what`` (the condition awaited), the last value and
    ``context()`` (a log, say) after ``timeout`` seconds, or as soon as
    ``gone()`` says why the condition cannot come any more (the process that
    would bring it about exited); it returns "" while it can.
    """
    __tracebackhide__ = True  # a failure shows the test's line that waited, not this loop
    deadline = time.monotonic() + timeout
    pause = min(FIRST_PAUSE, interval)
    while True:
        if reason := gone():
            pytest.fail(f"{what}: {reason}\n{context()}".rstrip())
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            seen = f":\n{value}" if isinstance(value, str) else f" {value!r}"  # a log, as it reads
            pytest.fail(f"{what}: not after {timeout:g}s; last saw{seen}\n{context()}".rstrip())
        time.sleep(pause)
        pause = min(pause * 1.5, interval)
