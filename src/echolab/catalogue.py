"""The servers echolab runs, in one place.

Every list of servers reads :data:`SERVERS`: the CLI's ``serve`` commands,
the demo and the benchmark, the Locust users and their arguments, the
native Locust runner, the report's and the dashboards' colours, the tests,
and the files that cannot import Python (the compose file, the Makefile's
``serve-*`` targets), which are generated from it or checked against it.
Adding a server is one entry here and its module: a module with
``run(server, settings) -> int`` that serves until SIGTERM.

Colours: the threaded family is warm, the async family cool, the same in the
demo report and in Grafana. Each server takes the next shade of its family,
so a new server gets a colour of its own without one being chosen for it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from . import protocol, settings
from .settings import Option

Family = Literal["threaded", "async"]


class Transport(enum.StrEnum):
    """What a server speaks, and what follows from it for its clients, the lab and the stack.

    Everyone who needs to know asks these properties, never the name.
    """

    TCP = "tcp"  # the line protocol, on a server that owns its connections
    HTTP = "http"  # POST /echo, on gunicorn: a master and its worker processes

    @property
    def framings(self) -> tuple[str, ...]:
        """What its clients can speak, the default first."""
        return ("http",) if self is Transport.HTTP else settings.FRAMINGS

    @property
    def health_path(self) -> str | None:
        """The path its echo port answers 200 on once a worker serves; None: it serves once the port accepts.

        (A gunicorn master binds the port before any worker can answer.)
        """
        return protocol.HEALTH_PATH if self is Transport.HTTP else None

    @property
    def owns_connections(self) -> bool:
        """Whether the server's own code holds its connections, and counts them (gunicorn holds HTTP's)."""
        return self is Transport.TCP

    @property
    def worker_processes(self) -> bool:
        """Whether it serves from worker processes under a master, whose metrics meet in files."""
        return self is Transport.HTTP


# Shades per family, in the order servers and lab contenders take them.
PALETTE: dict[Family, tuple[str, ...]] = {
    "threaded": ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#f7b6d2"),
    "async": ("#1f77b4", "#17becf", "#2ca02c", "#9467bd", "#7f7f7f", "#aec7e8", "#393b79", "#6b6ecf"),
}


@dataclass(frozen=True)
class Server:
    """One server: what it is, how it is started, where it listens natively."""

    name: str
    family: Family
    transport: Transport
    module: str  # import path of the module whose run(server, settings) serves it
    settings: type[settings.ServeSettings]
    port: int  # natively (make serve-NAME, make locust); in a container: ports.SERVER
    metrics_port: int
    summary: str

    @property
    def framing(self) -> str:
        """What a client speaks to it by default: the line protocol, or HTTP."""
        return self.transport.framings[0]

    @property
    def color(self) -> str:
        return PALETTE[self.family][[s.name for s in SERVERS if s.family == self.family].index(self.name)]

    @property
    def env_name(self) -> str:
        """The server's name in environment variables: ``threaded-http`` -> ``THREADED_HTTP``."""
        return self.name.replace("-", "_").upper()

    @property
    def locust_target(self) -> tuple[Option, Option]:
        """Locust's ``--NAME-host`` and ``--NAME-port`` (LOCUST_NAME_HOST, _PORT): where its users send."""
        return settings.target_options(self.name, self.port)

    @cached_property
    def flags(self) -> frozenset[str]:
        """The ``echolab serve`` flags its settings read (a scenario's flags apply where they are read)."""
        return frozenset(option.flag for option in settings.options(self.settings))

    def work_environment(self, flags: Sequence[str]) -> dict[str, str]:
        """The variables that give it the work model ``flags`` (flag, value...) set; the rest at defaults."""
        given = dict(zip(flags[::2], flags[1::2], strict=True))
        return {
            option.env: given.get(option.flag, settings.as_text(option.default))
            for option in settings.options(self.settings)
            if option.spec.work_model
        }


SERVERS: tuple[Server, ...] = (
    Server(
        "threaded",
        "threaded",
        Transport.TCP,
        "echolab.servers.threaded",
        settings.ThreadedSettings,
        9090,
        8000,
        "socketserver: a thread per connection, a bounded pool, or the article's serial server",
    ),
    Server(
        "async",
        "async",
        Transport.TCP,
        "echolab.servers.async_tcp",
        settings.AsyncSettings,
        9091,
        8001,
        "one asyncio event loop (uvloop or asyncio) for every connection: streams or a Protocol",
    ),
    Server(
        "threaded-http",
        "threaded",
        Transport.HTTP,
        "echolab.servers.gunicorn",
        settings.ThreadedHttpSettings,
        9092,
        8002,
        "HTTP: a WSGI app on gunicorn gthread workers (threads)",
    ),
    Server(
        "async-http",
        "async",
        Transport.HTTP,
        "echolab.servers.gunicorn",
        settings.AsyncHttpSettings,
        9093,
        8003,
        "HTTP: an ASGI app on gunicorn with uvicorn workers (uvloop)",
    ),
)
BY_NAME = {server.name: server for server in SERVERS}
NAMES = tuple(BY_NAME)


def server(name: str) -> Server:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no server {name!r}: choose from {', '.join(NAMES)}") from None
