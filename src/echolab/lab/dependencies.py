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
* The downstream service (:mod:`.downstream`) starts afresh for each sweep: its
  peak of calls in progress (a gauge it keeps itself, exact) is then that
  server's. The levels rise, so after each level it is that level's.

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

from ..scenarios import MAX_CONNECTIONS
from .downstream import DownstreamProcess
from .postgres import PostgreSQL, unavailable
from .sweep import Probe

PROBE_EVERY = 0.02  # seconds between two looks at pg_stat_activity: a 100 ms query is seen five times
# The queries of the servers running now, not the probe's own.
RUNNING_QUERIES = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
    "AND state = 'active' AND pid <> pg_backend_pid()"
)
PEAK_METRIC = "echo_downstream_calls_in_progress_peak"


class QueriesRunning:
    """The most queries running at once in PostgreSQL, sampled from ``pg_stat_activity``."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.connection = psycopg.connect(dsn, autocommit=True)
        self.peak = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self.stop.wait(PROBE_EVERY):
            row = self.connection.execute(RUNNING_QUERIES).fetchone()
            self.peak = max(self.peak, row[0] if row else 0)

    def start(self) -> None:
        self.peak = 0
        self.stop.clear()
        self.thread = threading.Thread(target=self._sample, name="queries-running", daemon=True)
        self.thread.start()

    def finish(self) -> int | None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        return self.peak

    def close(self) -> None:
        self.connection.close()


class CallsInProgress:
    """The downstream's own peak of calls in progress, read from its /metrics."""

    def __init__(self, metrics_url: str) -> None:
        self.metrics_url = metrics_url

    def start(self) -> None:
        pass

    def finish(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == PEAK_METRIC:
                        return int(sample.value)
        return None


def url_flag(io: str) -> str:
    return {"postgres": "--database-url", "http": "--downstream-url"}[io]


class Dependencies:
    """The dependencies of one lab run: each started when first needed, all stopped at the end."""

    def __init__(self) -> None:
        self.postgres: PostgreSQL | None = None

    @staticmethod
    def missing(io: str) -> str | None:
        """Why ``io``'s dependency cannot run here, in one line with how to install it; None if it can."""
        return unavailable() if io == "postgres" else None

    @contextlib.contextmanager
    def sweep(self, io: str) -> Iterator[tuple[tuple[str, ...], Probe | None]]:
        """The server's flags for ``io`` and a probe, for one server's sweep; ((), None) for a timer."""
        if io == "postgres":
            if self.postgres is None:
                self.postgres = PostgreSQL(MAX_CONNECTIONS + 1)
                self.postgres.start()  # close() removes its folder if it fails
            queries = QueriesRunning(self.postgres.dsn)
            try:
                yield (url_flag(io), self.postgres.dsn), queries
            finally:
                queries.close()
        elif io == "http":
            downstream = DownstreamProcess(("--log-level", "warning"))
            try:
                downstream.start()
                yield (url_flag(io), downstream.url), CallsInProgress(downstream.metrics_url)
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
