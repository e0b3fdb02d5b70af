"""Master and workers: how long a worker may stay silent before the master counts it as lost.

Locust's master marks a worker missing after three heartbeat intervals (3 s)
without a heartbeat; its users are then redistributed (``--enable-rebalancing``),
and if every worker is missing at once the master stops the test for good. On
a machine whose cores are shared with the servers under load, a worker that
is busy spawning can miss three heartbeats and lose the run. ``--worker-timeout``
sets that time: longer survives a starved machine, shorter notices a lost
worker sooner. Locust keeps it in a module constant, read as it counts.

Importing this module imports Locust.
"""

from __future__ import annotations

from typing import Any

from locust import runners
from locust.env import Environment


def on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or options.worker_timeout is None:
        return  # Locust's own
    if isinstance(environment.runner, runners.MasterRunner):
        runners.HEARTBEAT_LIVENESS = max(1, round(options.worker_timeout / runners.HEARTBEAT_INTERVAL))


def setup(hooks: Any) -> None:
    hooks.init.add_listener(on_init)
