"""Runs that end with a verdict: thresholds a headless run's exit status reports on.

By itself Locust exits 1 if any request failed (``--exit-code-on-error``),
else 0. A run that asks whether a server holds a load may expect some
failures and care about latency; with a threshold set, the master (or the
single local process) decides the exit status as it quits instead:

====  ==================================================================
0     every threshold met (failures within ``--max-fail-ratio`` included)
3     more than ``--max-fail-ratio`` of the requests failed
4     the 95th percentile was slower than ``--max-p95-ms``
5     no request at all: the load never reached a server
====  ==================================================================

The thresholds are not web UI fields, so the UI cannot change them (see
:mod:`echolab.load.locust_web`). Importing this module imports Locust.
"""

from __future__ import annotations

import logging
from typing import Any

from locust.env import Environment
from locust.runners import WorkerRunner

log = logging.getLogger("echolab.locust")

FAILED_RATIO, TOO_SLOW, NOTHING_SENT = 3, 4, 5


def verdict(
    fail_ratio: float, p95_ms: float, requests: int, max_fail_ratio: float, max_p95_ms: float
) -> int | None:
    """The exit status the thresholds give a run; None when no threshold is set (Locust decides)."""
    if max_fail_ratio < 0 and not max_p95_ms:
        return None
    if requests == 0:
        return NOTHING_SENT
    if max_fail_ratio >= 0 and fail_ratio > max_fail_ratio:
        return FAILED_RATIO
    if max_p95_ms and p95_ms > max_p95_ms:
        return TOO_SLOW
    return 0 if max_fail_ratio >= 0 else None


def on_quitting(environment: Environment, **_: Any) -> None:
    """Set the exit status from the thresholds (a listener of ``events.quitting``; workers have no say)."""
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return
    total = environment.stats.total
    p95 = total.get_response_time_percentile(0.95) or 0.0
    code = verdict(total.fail_ratio, p95, total.num_requests, options.max_fail_ratio, options.max_p95_ms)
    if code is not None:
        log.info(
            "thresholds: %d requests, %.2f%% failed, p95 %.0f ms: exit %d",
            total.num_requests, 100 * total.fail_ratio, p95, code,
        )  # fmt: skip
        environment.process_exit_code = code


def setup(hooks: Any) -> None:
    hooks.quitting.add_listener(on_quitting)
