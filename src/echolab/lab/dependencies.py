"""What a scenario's requests call (``--io postgres``, ``--io http``), as the lab runs it.

``with Dependencies() as deps:`` then, around each server's sweep,
``with deps.sweep(scenario.io) as (flags, probe):``: ``flags`` give the
server the dependency's URL, and ``probe`` counts, level by level, the most
calls the dependency saw at once, which is what the servers' pools let
through.

* PostgreSQL (:mod:`.postgres`) starts at the first sweep that needs it and
  runs until the end, with ``max_connections`` one over
  :data:`echolab.scenarios.MAX_CONNECTIONS`: the servers get exactly that
  many, the probe the one more. The probe samples ``pg_stat_activity`` for the
  queries running, on a connection it opens before the server starts (with
  every slot taken, it could not open one later).
* The downstream service (:mod:`.downstream`) starts afresh for each sweep,
  so that the peak of calls in progress it keeps (exact) is that server's; the
  probe samples its calls in progress too, for a level that does not raise it.

Where PostgreSQL cannot run, :meth:`Dependencies.missing` says why in one
line, with how to install it; the lab runs the rest.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.request
from collections.abc import Iterator
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from ..launcher import LaunchError
from ..scenarios import MAX_CONNECTIONS
from .downstream import DownstreamProcess
from .postgres import PostgresError, PostgreSQL, Unavailable, unavailable
from .sweep import Probe

# Requests still waiting for a pool when a sweep's client has gone are no one's: a server stops
# after a second's drain, not its default five, at the end of each sweep.
DRAIN = ("--drain-timeout", "1")
PROBE_EVERY = 0.05  # seconds between two looks: a 100 ms call is seen twice
# The queries of the servers running now, not the probe's own.
RUNNING_QUERIES = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
    "AND state = 'active' AND pid <> pg_backend_pid()"
)
IN_PROGRESS = "echo_downstream_calls_in_progress"
PEAK = "echo_downstream_calls_in_progress_peak"


class Sampled:
    """The most calls at once while a level runs: the largest of ``count()``, read every PROBE_EVERY."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def count(self) -> int:
        raise NotImplementedError

    def _sample(self) -> None:
        while not self.stop.wait(PROBE_EVERY):
            self.peak = max(self.peak, self.count())

    def start(self) -> None:
        self.peak = 0
        self.stop.clear()
        self.thread = threading.Thread(target=self._sample, name="dependency-probe", daemon=True)
        self.thread.start()

    def finish(self) -> int | None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        return self.peak


class QueriesRunning(Sampled):
    """The queries running in PostgreSQL, from ``pg_stat_activity``."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        super().__init__()
        self.connection = psycopg.connect(dsn, autocommit=True)

    def count(self) -> int:
        row = self.connection.execute(RUNNING_QUERIES).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.connection.close()


class CallsInProgress(Sampled):
    """The downstream's calls in progress, from its /metrics. It keeps their exact peak since it
    started: when a level raises it, that level's peak is that exact figure, not a sample."""

    def __init__(self, metrics_url: str) -> None:
        super().__init__()
        self.metrics_url = metrics_url
        self.before = 0

    def read(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def count(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(self.read().get(IN_PROGRESS, 0))
        return 0

    def start(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.before = int(self.read().get(PEAK, 0))
        super().start()

    def finish(self) -> int | None:
        sampled = super().finish()
        with contextlib.suppress(OSError, ValueError):
            peak = int(self.read().get(PEAK, 0))
            return peak if peak > self.before else sampled
        return sampled


class DependencyFailed(RuntimeError):
    """The dependency did not start: the message says which and why."""


def url_flag(io: str) -> str:
    return {"postgres": "--database-url", "http": "--downstream-url"}[io]


class Dependencies:
    """The dependencies of one lab run: each started when first needed, all stopped at the end."""

    def __init__(self) -> None:
        self.postgres: PostgreSQL | None = None
        self.failed: DependencyFailed | None = None  # PostgreSQL's start, which is not tried twice

    def database(self) -> PostgreSQL:
        if self.failed is not None:
            raise self.failed
        if self.postgres is None:
            try:
                self.postgres = PostgreSQL(MAX_CONNECTIONS + 1)
                self.postgres.start()
            except (Unavailable, PostgresError, OSError) as exc:
                self.close()
                self.failed = DependencyFailed(f"PostgreSQL did not start: {exc}")
                raise self.failed from None
        return self.postgres

    @staticmethod
    def missing(io: str) -> str | None:
        """Why ``io``'s dependency cannot run here, in one line with how to install it; None if it can."""
        return unavailable() if io == "postgres" else None

    @contextlib.contextmanager
    def sweep(self, io: str) -> Iterator[tuple[tuple[str, ...], Probe | None]]:
        """The server's flags for ``io`` and a probe, for one server's sweep; ((), None) for a timer."""
        if io == "postgres":
            dsn = self.database().dsn
            queries = QueriesRunning(dsn)
            try:
                yield (url_flag(io), dsn, *DRAIN), queries
            finally:
                queries.close()
        elif io == "http":
            downstream = DownstreamProcess(("--log-level", "warning"))
            try:
                try:
                    downstream.start()
                except LaunchError as exc:
                    raise DependencyFailed(f"the downstream service did not start: {exc}") from None
                yield (url_flag(io), downstream.url, *DRAIN), CallsInProgress(downstream.metrics_url)
            finally:
                if downstream.running():
                    downstream.stop()
        else:
            yield (), None

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.close()
            self.postgres = None

    def __enter__(self) -> Dependencies:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
