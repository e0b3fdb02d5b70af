"""The pool a server reaches its dependency through, as its settings give it: for the report to show.

A server under ``--io postgres`` or ``--io http`` holds at most its pool's
connections at once: psycopg_pool's default of 4, asyncpg's 10, httpx's 100
(``--pool-size 0``, the library's own; see the settings table). gunicorn's
workers are processes, and each has a pool of its own: the HTTP servers hold
``--workers`` times as many. requests' pool does not block: past its 10 it
opens more connections and throws them away, so it is no limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..scenarios import Scenario
from ..settings import from_environment, options
from .contenders import Contender

# The libraries' own pool sizes: what a server gets with --pool-size 0, the default.
LIBRARY_DEFAULTS = {"psycopg_pool": 4, "asyncpg": 10, "httpx": 100, "requests": 10}
BLOCKS = {"psycopg_pool": True, "asyncpg": True, "httpx": True, "requests": False}


@dataclass(frozen=True)
class Pool:
    library: str
    size: int
    workers: int  # processes, each with a pool of its own

    @property
    def limit(self) -> int | None:
        """The most connections the server holds at once; None when its pool does not block."""
        return self.size * self.workers if BLOCKS[self.library] else None

    @property
    def text(self) -> str:
        one = f"{self.library} {self.size:,}"
        if self.size == LIBRARY_DEFAULTS[self.library]:
            owner = f"{self.library}'" if self.library.endswith("s") else f"{self.library}'s"
            one = f"{owner} default of {self.size}"
        if not BLOCKS[self.library]:
            one += ", which does not block"
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
    if scenario.io == "postgres":
        library = "asyncpg" if getattr(settings, "db_driver", "psycopg") == "asyncpg" else "psycopg_pool"
    else:
        library = "requests" if getattr(settings, "http_client", "httpx") == "requests" else "httpx"
    size = getattr(settings, "pool_size", 0) or LIBRARY_DEFAULTS[library]
    return Pool(library, size, getattr(settings, "workers", 1))


def pools(contenders: Sequence[Contender], scenario: Scenario) -> tuple[tuple[str, int | None, str], ...]:
    """(server, the most it holds at once or None, its pool in words) for the report's section."""
    found = [(c.name, pool_of(c, scenario)) for c in contenders]
    return tuple((name, pool.limit, pool.text) for name, pool in found if pool is not None)
