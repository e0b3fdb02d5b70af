"""The pool a server reaches its dependency through, as its settings give it: for the report to show.

A server under ``--io postgres`` or ``--io http`` holds at most its pool's
connections at once: ``--pool-size``, or with 0 its library's own default
(:data:`echolab.settings.LIBRARY_POOL_SIZES`). gunicorn's workers are
processes, and each has a pool of its own: the HTTP servers hold
``--workers`` times as many. requests' pool does not wait: past its 10 it
opens more connections and drops them, so it is no limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..scenarios import Scenario
from ..servers.dependency import library, pool_size
from ..settings import LIBRARY_POOL_SIZES, from_environment, options
from .contenders import Contender

POOLS = {"psycopg": "psycopg_pool"}  # the library whose pool a driver's calls wait for, where it differs
WAITLESS = {"requests"}  # past its pool it opens more connections (and drops them): no limit


@dataclass(frozen=True)
class Pool:
    library: str  # the client's, as --db-driver and --http-client name it
    size: int  # per process
    workers: int  # processes, each with a pool of its own

    @property
    def limit(self) -> int | None:
        """The most connections the server holds at once; None when its pool does not wait."""
        return None if self.library in WAITLESS else self.size * self.workers

    @property
    def text(self) -> str:
        name = POOLS.get(self.library, self.library)
        one = f"{name} {self.size:,}"
        if self.size == LIBRARY_POOL_SIZES[self.library]:
            owner = f"{name}'" if name.endswith("s") else f"{name}'s"
            one = f"{owner} default of {self.size}"
        if self.library in WAITLESS:
            one += ", which does not wait"
        if self.workers == 1:
            return one
        return f"{self.workers} worker processes, each with {one}"


def flags_of(contender: Contender, scenario: Scenario) -> dict[str, str]:
    """The flags the contender's server runs the scenario with: the scenario's after its own."""
    flags = (*contender.options, *(scenario.options_for(contender.server) if contender.server else ()))
    return dict(zip(flags[::2], flags[1::2], strict=True))


def pool_of(contender: Contender, scenario: Scenario) -> Pool | None:
    """The pool ``contender`` reaches the scenario's dependency through; None for a timer."""
    if scenario.io == "timer" or contender.server is None:
        return None
    # The run's URL is not known yet, and the pool does not depend on it.
    given = {"--database-url": "postgresql://lab@127.0.0.1/lab", **flags_of(contender, scenario)}
    known = list(options(contender.server.settings))
    settings = from_environment(
        contender.server.settings, {o.env: given[o.flag] for o in known if o.flag in given}
    )
    return Pool(library(settings), pool_size(settings), getattr(settings, "workers", 1))


def pools(contenders: Sequence[Contender], scenario: Scenario) -> tuple[tuple[str, int | None, str], ...]:
    """(server, the most it holds at once or None, its pool in words) for the report's section."""
    found = [(c.name, pool_of(c, scenario)) for c in contenders]
    return tuple((name, pool.limit, pool.text) for name, pool in found if pool is not None)
