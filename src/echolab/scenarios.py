"""The workloads the lab compares the servers under: one preset of server settings each.

Every server runs a scenario with the same work model (servers/work_model.py), so
the only difference between two rows of a scenario is the server. ``io`` is
the article's workload (awaited IO only); the others add the work that
decides the answer for most services (see docs/scenarios.md, where
each model breaks):

* ``cpu``: 2 ms of pure-Python CPU per request and no IO. The GIL lets one
  thread compute at a time, so both models top out near one core:
  ~500 requests/s, whatever the concurrency.
* ``blocking``: a 20 ms blocking call per request (a sync driver) and no IO.
  A thread waits it out as it waits out IO; an event loop stalls through it,
  so the async servers serve one request at a time: 50 requests/s.
* ``offload``: the same call, which the event-loop servers hand to a pool of
  32 threads (``--offload thread``): they become a pool of 32, 1,600 requests/s
  at most.
* ``mixed``: 1 ms of CPU, a 5 ms blocking call left on the loop, 50 ms of IO:
  a service with an async driver for most of its IO and one sync call.

Three more make the IO a real dependency (``--io``, issue 18); the lab starts
it and gives each server its URL (``--database-url``, ``--downstream-url``):

* ``db``: ``SELECT pg_sleep(0.1)`` on PostgreSQL through each driver's
  default pool (psycopg_pool's 4 connections, asyncpg's 10): the pool, not
  the model, sets the rate.
* ``db-pool``: the same through pools of :data:`DB_POOL_SIZE`, one per client
  at its level, past PostgreSQL's ``max_connections`` (:data:`MAX_CONNECTIONS`),
  which then sets the rate.
* ``api``: a 100 ms call to the downstream service through each HTTP client's
  default pool (httpx's 100 connections; requests' 10, which do not block).

Their telling levels are past those limits, so they carry their own
(``levels``), as few as show them, and db-pool and api run in the demo on the
line-protocol servers alone (``servers``): ``make demo`` stays under five
minutes. The lab measures every level: a pool holds a server at a flat rate
under the bound, and that flat rate is the finding.

A flag applies to the servers that read it: ``--offload`` and
``--offload-threads`` exist only on the event-loop servers' settings
(``async``, ``async-http``); a threaded server has nothing to offload, its
blocking call is already in a thread, and runs the scenario without them.

A scenario decides the whole work model (the settings marked ``work_model``
in settings.py): what its preset does not name runs at its default. So in the
stack, where ``make scenario`` puts every server under a preset over what
``.env`` set (:meth:`Scenario.environment`), a scenario means what it means
in the demo.

Scenarios are data, beside the catalogue of servers: the settings check
``--scenario`` against them, the lab runs them, the stack's ``make scenario``
renders them. This module imports nothing of echolab's; what a scenario needs
to know of a server is :class:`Reader`, which the catalogue's servers are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Reader(Protocol):
    """A server as a scenario sees it: the flags it reads, and the variables that set its work model."""

    @property
    def flags(self) -> frozenset[str]:
        """The ``echolab serve`` flags the server's settings read."""
        ...

    def work_environment(self, flags: Sequence[str]) -> dict[str, str]:
        """The variables that give the server the work model ``flags`` set, the rest at its defaults."""
        ...


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # what it stands for, in one line
    options: tuple[str, ...]  # `echolab serve` flag-value pairs; each applies where a server reads it
    delay_hint_ms: float  # the time one request takes on an idle server: the Little's-law bound's D
    levels: tuple[int, ...] = ()  # the demo's levels for it; () for its --other-levels
    servers: tuple[str, ...] = ()  # the demo runs it on these servers alone; () on every one
    warmup: float = 0.0  # the demo's warm-up for it, where longer than --warmup (s)

    @property
    def io(self) -> str:
        """What a request's IO waits on (``--io``): timer, postgres or http."""
        pairs = dict(zip(self.options[::2], self.options[1::2], strict=True))
        return pairs.get("--io", "timer")

    def bound(self, connections: int) -> float | None:
        """Requests/s a closed loop of ``connections`` cannot exceed."""
        return connections / (self.delay_hint_ms / 1000) if self.delay_hint_ms > 0 else None

    def options_for(self, server: Reader) -> tuple[str, ...]:
        """The scenario's flags that ``server``'s settings read, in order."""
        read = server.flags
        pairs = zip(self.options[::2], self.options[1::2], strict=True)
        return tuple(part for flag, value in pairs if flag in read for part in (flag, value))

    def environment(self, server: Reader) -> dict[str, str]:
        """The variables that give ``server`` the scenario's work model: its flags, the rest at defaults."""
        return server.work_environment(self.options_for(server))


IO = Scenario("io", "100 ms of awaited IO per request, nothing else", ("--delay-ms", "100"), 100.0)
CPU = Scenario(
    "cpu",
    "2 ms of pure-Python CPU per request (holding the GIL), no IO",
    ("--delay-ms", "0", "--cpu-ms", "2"),
    2.0,
)
BLOCKING = Scenario(
    "blocking",
    "a 20 ms blocking call per request (a sync driver), no IO; on the event loop",
    ("--delay-ms", "0", "--blocking-ms", "20"),
    20.0,
)
OFFLOAD = Scenario(
    "offload",
    "the 20 ms blocking call, offloaded to 32 threads on the event-loop servers",
    ("--delay-ms", "0", "--blocking-ms", "20", "--offload", "thread", "--offload-threads", "32"),
    20.0,
)
MIXED = Scenario(
    "mixed",
    "1 ms CPU, a 5 ms blocking call (on the loop), 50 ms of awaited IO",
    ("--cpu-ms", "1", "--blocking-ms", "5", "--delay-ms", "50"),
    56.0,
)

# PostgreSQL's own default, set explicitly wherever the lab runs one: what a service meets.
MAX_CONNECTIONS = 100
DB_POOL_SIZE = 1000  # db-pool's pools: one connection per client at its top level
# The demo runs db-pool and api on the line-protocol servers alone, to stay under five minutes; db
# shows the HTTP pair's pools (a pool in each gunicorn worker).
TCP_SERVERS = ("threaded", "async")
DB = Scenario(
    "db",
    "100 ms of pg_sleep per request on PostgreSQL, through each driver's default pool",
    ("--io", "postgres", "--delay-ms", "100"),
    100.0,
    (10, 1000),
)
DB_POOL = Scenario(
    "db-pool",
    f"the same pg_sleep, through pools of {DB_POOL_SIZE:,} connections: "
    f"PostgreSQL's max_connections ({MAX_CONNECTIONS}) is the limit",
    ("--io", "postgres", "--delay-ms", "100", "--pool-size", str(DB_POOL_SIZE)),
    100.0,
    (1000,),
    TCP_SERVERS,
    # Pools of a thousand, past max_connections, take seconds to hold the hundred they can get: the
    # attempts PostgreSQL refuses are retried (psycopg_pool) or fail requests (asyncpg).
    3.0,
)
API = Scenario(
    "api",
    "a 100 ms call to a downstream HTTP service per request, through each client's default pool",
    ("--io", "http", "--delay-ms", "100"),
    100.0,
    (1000,),
    TCP_SERVERS,
)
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (IO, CPU, BLOCKING, OFFLOAD, MIXED, DB, DB_POOL, API)}
