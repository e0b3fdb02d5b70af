"""The contenders: the servers as the lab runs them, a catalogue server with options or a bare reference.

A contender has a name (what tables and charts call it), a framing, and a
colour: a catalogue server's own colour, or a further shade of its family's
(threaded warm, async cool; see :mod:`echolab.catalogue`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .. import interpreters
from ..catalogue import PALETTE, SERVERS, Family, Server, server
from ..launcher import LaunchError, Process, ServerProcess, free_port
from ..servers import protections
from ..settings import STOP_TIMEOUT


@dataclass(frozen=True)
class Contender:
    name: str
    family: Family
    framing: str
    color: str
    server: Server | None = None  # None: a bare reference (echolab.servers.bare)
    options: tuple[str, ...] = ()
    reference: str = ""  # the bare reference's kind: uvloop | streams | threaded
    env: tuple[tuple[str, str], ...] = ()  # set in the server's environment
    venv: interpreters.Venv | None = None  # another interpreter's, to run under; None: the lab's own

    @property
    def python(self) -> str:
        return self.venv.python if self.venv else sys.executable

    def runtime(self) -> dict[str, str]:
        """What it runs on, for every result: Python version, GIL on or off, event loop."""
        interpreter = self.venv.interpreter if self.venv else interpreters.here()
        if self.family == "threaded":
            loop = "none"
        elif self.server is not None and self.reads("--loop"):
            loop = interpreters.chosen(self.options)["loop"]
        else:
            loop = "uvloop"  # the bare references and async-http run on uvloop
        return {**interpreter.facts(), "loop": loop}

    def under(self, venv: interpreters.Venv | None, named: bool = True) -> Contender:
        """This contender under another interpreter (None: the lab's own), named for it if ``named``:
        ``threaded@3.13``."""
        if venv is None:
            return self
        name = f"{self.name}@{venv.interpreter.tag}" if named else self.name
        return dataclasses.replace(self, name=name, venv=venv)

    def refused(self) -> str | None:
        """Why its interpreter cannot run it (a dependency that would not install there), or None."""
        if self.venv is None or self.server is None:
            return None
        return self.venv.refuses(self.server.name, interpreters.chosen(self.options))

    def reads(self, flag: str) -> bool:
        """Whether its server takes ``flag`` (a bare reference takes none)."""
        return self.server is not None and flag in self.server.flags

    def process(self, delay_ms: float, options: Sequence[str] = ()) -> Process:
        """A process that serves this contender with ``delay_ms`` of simulated IO, not yet started.

        ``options``, `echolab serve` flags (a scenario's), come last: theirs win,
        ``--delay-ms`` too. A bare reference takes none.
        """
        if self.server is None:
            if options:
                raise ValueError(
                    f"{self.name} is a bare reference: it takes no options ({' '.join(options)})"
                )
            port = free_port()
            argv = [self.python, "-m", "echolab.servers.bare", self.reference, str(port), f"{delay_ms:g}"]
            return Process(argv, name=self.name, port=port)
        framing = ("--framing", self.framing) if self.reads("--framing") else ()
        # At the default log level, info: a server that fails to stop has said what it was doing.
        flags = (*framing, "--delay-ms", f"{delay_ms:g}", *self.options, *options)
        # ECHO_PYTHON is for a server started by hand: here, the contender says which interpreter.
        env = {**os.environ, **dict(self.env), "ECHO_PYTHON": ""}
        return ServerProcess(self.server, flags, env=env, python=self.python)


@contextlib.contextmanager
def running(
    contender: Contender,
    delay_ms: float,
    options: Sequence[str] = (),
    *,
    stop_timeout: float = STOP_TIMEOUT,
    on_stop_error: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, Process]]:
    """Start the contender on a free loopback port, yield (port, process), stop it with SIGTERM.

    A server that has not exited ``stop_timeout`` seconds after SIGTERM is killed with all it
    started, and the LaunchError's one line goes to ``on_stop_error`` (raised without it); one
    that has died already leaves nothing behind either (a gunicorn master's workers).
    """
    process = contender.process(delay_ms, options)
    try:
        process.start()
        yield process.port, process
    finally:
        if not process.running():
            process.kill()
        elif on_stop_error is None:
            process.stop(stop_timeout)
        else:
            try:
                process.stop(stop_timeout)
            except LaunchError as exc:
                on_stop_error(exc.summary)


def without(contender: Contender, *off: str) -> Contender:
    """``contender`` with protections turned off (bench only): ``metrics``, or any of
    :data:`.protections.PROTECTIONS`; named for what it lacks."""
    switched = ",".join(name for name in off if name != "metrics")
    return dataclasses.replace(
        contender,
        name=f"{contender.name} (no {', '.join(off)})",
        options=(*contender.options, "--no-metrics") if "metrics" in off else contender.options,
        env=((protections.ENV, switched),) if switched else (),
    )


def of(server_kind: Server) -> Contender:
    """A catalogue server as it is, in its own colour."""
    return Contender(
        server_kind.name, server_kind.family, server_kind.framing, server_kind.color, server_kind
    )


SERVERS_AS_THEY_ARE = tuple(of(s) for s in SERVERS)
# The article's baseline speaks its own protocol: with persistent
# connections, a serial server would serve its first client forever.
SERIAL = Contender(
    "serial", "threaded", "oneshot", PALETTE["threaded"][2], server("threaded"), ("--model", "serial")
)
POOL = Contender(
    "pool (64 threads)", "threaded", "lines", PALETTE["threaded"][3], server("threaded"),
    ("--model", "pool", "--threads", "64"),
)  # fmt: skip
# The async server in each API, named for it whichever is the default.
ASYNC_STREAMS = Contender(
    "async streams", "async", "lines", PALETTE["async"][0], server("async"), ("--api", "streams")
)
ASYNC_PROTOCOL = Contender(
    "async protocol", "async", "lines", PALETTE["async"][4], server("async"), ("--api", "protocol")
)
ASYNC_NO_METRICS = dataclasses.replace(without(ASYNC_STREAMS, "metrics"), color=PALETTE["async"][2])
BARE_UVLOOP = Contender("bare uvloop", "async", "lines", PALETTE["async"][3], reference="uvloop")
BARE_STREAMS = Contender("bare streams", "async", "lines", PALETTE["async"][5], reference="streams")
BARE_THREADED = Contender("bare threaded", "threaded", "lines", PALETTE["threaded"][4], reference="threaded")
# async-http's parser choice (docs/server-behavior.md): its hardening against bare uvicorn, and h11.
ASYNC_HTTP_BARE_ALIKE = Contender(
    "async-http (1 worker, no metrics)", "async", "http", server("async-http").color, server("async-http"),
    ("--workers", "1", "--no-metrics"),
)  # fmt: skip
BARE_HTTPTOOLS = Contender("bare httptools", "async", "http", PALETTE["async"][6], reference="httptools")
BARE_H11 = Contender("bare h11", "async", "http", PALETTE["async"][7], reference="h11")
# The other clients a server can call its dependency through (``--io``): asyncpg, what people pick
# for speed, on the event loop; requests in threads, whose pool does not block but opens more.
ASYNCPG = Contender(
    "async (asyncpg)", "async", "lines", PALETTE["async"][2], server("async"), ("--db-driver", "asyncpg")
)
REQUESTS = Contender(
    "threaded (requests)", "threaded", "lines", PALETTE["threaded"][5], server("threaded"),
    ("--http-client", "requests"),
)  # fmt: skip
ALTERNATIVES: dict[str, tuple[Contender, ...]] = {"postgres": (ASYNCPG,), "http": (REQUESTS,)}
ALL = (
    *SERVERS_AS_THEY_ARE, SERIAL, POOL, ASYNC_STREAMS, ASYNC_PROTOCOL, ASYNC_NO_METRICS,
    BARE_UVLOOP, BARE_STREAMS, BARE_THREADED, ASYNC_HTTP_BARE_ALIKE, BARE_HTTPTOOLS, BARE_H11,
    ASYNCPG, REQUESTS,
)  # fmt: skip
COLORS = {v.name: v.color for v in ALL}
