"""Locust support for the echo servers: the arguments, the client-side metrics, the user classes.

Like the modules in ``locust.contrib``, this holds what a locustfile needs to
load our servers; ``loadtest/locustfile.py`` only calls :func:`setup` and
:func:`user_classes`. There is one user class per server of the catalogue,
so Locust's stats, charts and the client-side metrics keep them apart: the
TCP servers' users speak the line protocol (:mod:`echolab.load.locust_tcp`),
the HTTP servers' are FastHttpUsers (:mod:`echolab.load.locust_http`).

Importing this module imports Locust, which monkey-patches the process for
gevent: never import it from the servers or the asyncio benchmark
(``echolab.load.capacity`` runs Locust in a subprocess instead).

It wires the modules that do the work, each importing only those below it:
:mod:`.locust_args` (the arguments), :mod:`.locust_metrics` (the client-side
metrics), :mod:`.open_loop`, the two users, the web UI's guard, the
thresholds and the cluster's heartbeat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from locust import User, events
from locust.env import Environment

from .. import ports
from ..catalogue import BY_NAME, SERVERS, Server, Transport
from . import locust_args, locust_cluster, locust_thresholds, locust_web, open_loop
from .locust_args import target_url
from .locust_http import HttpEchoUser
from .locust_metrics import client_metrics, role, serve_metrics, user_counter
from .locust_tcp import EchoUser

log = logging.getLogger("echolab.locust")
USERS: dict[Transport, type[User]] = {Transport.TCP: EchoUser, Transport.HTTP: HttpEchoUser}


def show_targets(environment: Environment) -> None:
    """Each user class's ``host``: its server's address, for the web UI and the HTML report to show."""
    classes: Mapping[str, Any] = environment.available_user_classes or environment.user_classes_by_name
    for cls in classes.values():
        server = getattr(cls, "server", None)
        if server is not None and environment.parsed_options is not None:
            cls.host = target_url(environment.parsed_options, BY_NAME[server])


def on_init(environment: Environment, **_: Any) -> None:
    """Start this process's /metrics, show the targets, guard the web UI (every process fires ``init``)."""
    show_targets(environment)
    locust_web.install(environment, user_counter(environment))
    options = environment.parsed_options
    metrics = client_metrics()
    metrics.track(role(environment.runner), user_counter(environment), options.think_time if options else 0.0)
    wanted = options.metrics_port if options else ports.LOCUST_METRICS
    host = options.metrics_host if options else "0.0.0.0"
    port = serve_metrics(wanted, host)
    moved = bool(wanted) and port != wanted  # expected for the second worker on a host: log, don't warn
    log.info("client metrics (%s) on http://%s:%d/metrics%s", role(environment.runner), host, port,
             f" (port {wanted} was taken)" if moved else "")  # fmt: skip


def setup(hooks: Any = events) -> None:
    """Wire the arguments and the metrics into Locust's events (call once, from the locustfile)."""
    hooks.init_command_line_parser.add_listener(locust_args.add_arguments)
    hooks.init.add_listener(on_init)
    open_loop.setup(hooks)
    locust_thresholds.setup(hooks)
    locust_cluster.setup(hooks)


def user_class_name(server: Server) -> str:
    """``threaded-http`` -> ``ThreadedHttpUser``: what Locust's UI, stats and command line call its users."""
    return "".join(part.capitalize() for part in server.name.split("-")) + "User"


def user_classes() -> dict[str, type[User]]:
    """One user class per server of the catalogue, by class name (a locustfile puts them in its globals)."""
    classes: dict[str, type[User]] = {}
    for server in SERVERS:
        base = USERS[server.transport]
        flag = f"--{server.name}-host/--{server.name}-port"
        doc = f"Loads the {server.name} server ({flag}): {server.summary}."
        classes[user_class_name(server)] = type(
            user_class_name(server), (base,), {"server": server.name, "__doc__": doc}
        )
    return classes
