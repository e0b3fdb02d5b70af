"""The simulated work of one request, the same in every server: CPU, then a blocking call, then IO.

* **CPU** (``--cpu-ms``): a pure-Python loop that holds the GIL, as parsing,
  templating and serialising do. It runs a fixed kernel in small chunks
  (:data:`CHUNK_ITERATIONS`, some tens of microseconds) until this thread's
  own CPU clock (``time.thread_time``) has advanced by the setting, so a
  request's work costs the setting by construction, on a quiet core as on
  one shared with a busy neighbour: a neighbour slows the loop (a
  hyperthread sibling up to twice), which then does fewer iterations in the
  same CPU time. A fixed number of iterations, calibrated once at start-up
  when nothing else ran, cost 30% more than the setting under load. Time
  the thread spends preempted or waiting for the GIL is not its CPU time
  and does not count.
* **Blocking** (``--blocking-ms``): ``time.sleep``, standing for a call into a
  sync driver. A thread waits it out, as it waits out IO. An event loop
  either stalls through it (``--offload none``, the classic mistake) or hands
  it to a bounded pool of ``--offload-threads`` threads (``--offload thread``),
  which is what ``asyncio.to_thread`` and ``loop.run_in_executor`` do.
* **IO** (``--delay-ms``): awaited on an event loop, slept through in a
  thread; fixed, or drawn per request from an exponential distribution with
  that mean (``--delay-distribution exponential``), for the long tail of real IO.
  With ``--io postgres`` or ``--io http`` it is a real dependency instead of
  a timer: ``SELECT pg_sleep`` of that time, or a call to the downstream
  service that answers after it, through a driver's pool
  (:mod:`.postgres_io`, :mod:`.http_io`). A failed call raises
  :class:`.dependency.DependencyError`, which the server answers with one line.

The offload pool's size: asyncio's default executor has ``min(32, cores + 4)``
threads, 6 on a two-core machine, which caps 20 ms blocking calls at 300 a
second whatever the load. The default here is 32, the default executor's
ceiling: a fixed number, so a run means the same on every machine, and
enough that the pool, not the loop, is what the offload scenario measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..settings import OffloadSettings, ServeSettings
from . import dependency
from .dependency import DependencyError, Events, LoopClient, NoEvents, ThreadClient

# Iterations of the kernel between two looks at the clock: about 10-30 us here, so the work
# overshoots its setting by half that on average, and reading the clock (a system call, under
# 1 us) is a few percent of the work.
CHUNK_ITERATIONS = 200


def spin(iterations: int) -> int:
    """The CPU kernel: integer arithmetic in a Python loop, nothing the interpreter can skip."""
    x = 1
    for i in range(iterations):
        x = (x * 1103515245 + i) & 0xFFFFFFFF
    return x


def burn(seconds: float) -> None:
    """Run the kernel until this thread has used ``seconds`` of CPU time."""
    clock = time.thread_time
    until = clock() + seconds
    while clock() < until:
        spin(CHUNK_ITERATIONS)


PoolChanged = Callable[[int, int], None]  # (threads busy, tasks queued)


class OffloadPool:
    """A bounded thread pool for blocking calls that counts its threads busy and its tasks queued.

    ``submitted`` is only written by the event loop's thread; ``started`` and
    ``finished`` by the pool's threads, under a lock (``+=`` is not atomic
    across threads). ``on_change``, if given, hears every change (the HTTP
    servers' gauges); the TCP servers read the counts when scraped.
    """

    def __init__(self, threads: int, on_change: PoolChanged | None = None) -> None:
        self.threads = threads
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="offload")
        self.on_change = on_change
        self._lock = threading.Lock()
        self.submitted = self.started = self.finished = 0

    @property
    def busy(self) -> int:
        return self.started - self.finished

    @property
    def queued(self) -> int:
        return self.submitted - self.started

    def submit(self, seconds: float) -> Future[None]:
        """Sleep ``seconds`` in a pool thread."""
        self.submitted += 1
        self._changed()
        return self.executor.submit(self._block, seconds)

    def _block(self, seconds: float) -> None:
        with self._lock:
            self.started += 1
            self._changed()
        try:
            time.sleep(seconds)
        finally:
            with self._lock:
                self.finished += 1
                self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.busy, self.queued)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def info(settings: ServeSettings) -> dict[str, str]:
    """The work model in force, for ``echo_server_info``."""
    labels = {
        "delay_ms": f"{settings.delay_ms:g}",
        "delay_distribution": settings.delay_distribution,
        "cpu_ms": f"{settings.cpu_ms:g}",
        "blocking_ms": f"{settings.blocking_ms:g}",
    }
    if isinstance(settings, OffloadSettings):
        labels["offload"] = settings.offload
        if settings.offload == "thread":  # the pool's size, where there is a pool
            labels["offload_threads"] = str(settings.offload_threads)
    labels["io"] = settings.io
    if settings.io != "timer":
        labels |= {
            "client": dependency.library(settings),
            "pool_size": str(dependency.pool_size(settings)),
            "pool_timeout": f"{settings.pool_timeout:g}",
        }
    return labels


def thread_client(settings: ServeSettings, events: Events) -> ThreadClient | None:
    """The dependency as threads call it (None: --io timer). The drivers are imported only when used."""
    library = dependency.library(settings)
    if library == "psycopg":
        from .postgres_io import ThreadPostgres

        return ThreadPostgres(settings, events)
    if library == "requests":
        from .requests_io import ThreadRequests

        return ThreadRequests(settings, events)
    if library == "httpx":
        from .http_io import ThreadHttpx

        return ThreadHttpx(settings, events)
    return None


def loop_client(settings: ServeSettings, events: Events) -> LoopClient | None:
    """The dependency as an event loop awaits it (None: --io timer)."""
    library = dependency.library(settings)
    if library == "asyncpg":
        from .asyncpg_io import LoopAsyncpg

        return LoopAsyncpg(settings, events)
    if library == "psycopg":
        from .postgres_io import LoopPsycopg

        return LoopPsycopg(settings, events)
    if library == "httpx":
        from .http_io import LoopHttpx

        return LoopHttpx(settings, events)
    return None


Record = Callable[[float, float, float], None]  # seconds of (cpu, blocking, io) work done


def _no_record(cpu: float, blocking: float, io: float) -> None:
    pass


class Workload:
    """One request's work, as the settings say; ``record`` counts it once it is done.

    Three ways to run it, one per kind of server: :meth:`run` in a thread,
    :meth:`run_async` in a coroutine, and :meth:`start` then ``finish`` in
    callbacks (the protocol server, whose IO is its own coalesced timer, or
    :meth:`await_io` for a dependency). A dependency's failure raises
    DependencyError (:meth:`await_io`: ``then(False)``), and the IO is not counted.
    On an event loop, :meth:`open` on the loop first, and :meth:`aclose` at the end.
    """

    def __init__(
        self,
        settings: ServeSettings,
        record: Record = _no_record,
        on_pool_change: PoolChanged | None = None,
        events: Events | None = None,
    ) -> None:
        self.cpu_seconds = settings.cpu_ms / 1000.0
        self.blocking = settings.blocking_ms / 1000.0
        self.io_mean = settings.delay_ms / 1000.0
        self.exponential = settings.delay_distribution == "exponential" and self.io_mean > 0
        # Counts a request whose IO of ``io`` seconds is over; the partial makes the one call into
        # ``record`` from C, a Python call less per request.
        self.finish: Callable[[float], None] = functools.partial(record, self.cpu_seconds, self.blocking)
        self.pool: OffloadPool | None = None
        if isinstance(settings, OffloadSettings) and settings.offload == "thread" and self.blocking:
            self.pool = OffloadPool(settings.offload_threads, on_pool_change)
        self.before_io = bool(self.cpu_seconds or self.blocking)  # anything to do before the IO
        self.calls: ThreadClient | None = None  # the dependency, from threads
        self.awaits: LoopClient | None = None  # the dependency, on an event loop
        if isinstance(settings, OffloadSettings):
            self.awaits = loop_client(settings, events or NoEvents())
        else:
            self.calls = thread_client(settings, events or NoEvents())
        self._calls: set[asyncio.Task[None]] = set()  # await_io's: the loop keeps only weak references

    @property
    def offloaded(self) -> bool:
        return self.pool is not None

    def io(self) -> float:
        """This request's IO time, in seconds."""
        return random.expovariate(1.0 / self.io_mean) if self.exponential else self.io_mean

    def cpu(self) -> None:
        if self.cpu_seconds:
            burn(self.cpu_seconds)

    def _block_here(self) -> None:
        if self.blocking:
            time.sleep(self.blocking)

    # --- in a thread --------------------------------------------------------

    def run(self) -> None:
        """All of it in the calling thread: compute, block, sleep through the IO."""
        if self.before_io:
            self.cpu()
            self._block_here()
        io = self.io()
        if self.calls is not None:
            self.calls.call(io)
        elif io:
            time.sleep(io)
        self.finish(io)

    # --- in a coroutine -----------------------------------------------------

    async def run_async(self) -> None:
        """On an event loop: compute, block (on the loop, or in the pool), await the IO."""
        if self.before_io:
            self.cpu()
            if self.pool is not None:
                await asyncio.wrap_future(self.pool.submit(self.blocking))
            else:
                self._block_here()
        io = self.io()
        if self.awaits is not None:
            await self.awaits.call(io)
        elif io:
            await asyncio.sleep(io)
        self.finish(io)

    async def open(self) -> None:
        if self.awaits is not None:
            await self.awaits.open()

    async def aclose(self) -> None:
        if self.awaits is not None:
            await self.awaits.close()

    # --- in callbacks -------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, then: Callable[[], None]) -> bool:
        """Compute and block; True if done, else ``then()`` runs on ``loop`` once the pool is done."""
        self.cpu()
        if self.pool is None:
            self._block_here()
            return True

        def done(future: Future[None]) -> None:
            if not future.cancelled():  # cancelled: the server is stopping
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(then)

        self.pool.submit(self.blocking).add_done_callback(done)
        return False

    def await_io(self, loop: asyncio.AbstractEventLoop, io: float, then: Callable[[bool], None]) -> None:
        """Call the dependency for ``io`` seconds in a task; ``then(ok)`` once it answered or failed
        (the caller counts the IO with ``finish``, if ok)."""
        assert self.awaits is not None, "an IO of a dependency"
        task = loop.create_task(self.awaits.call(io))
        self._calls.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._calls.discard(task)
            if task.cancelled():  # the server is stopping
                return
            error = task.exception()
            if error is not None and not isinstance(error, DependencyError):
                raise error  # a bug: the loop's exception handler logs it
            then(error is None)

        task.add_done_callback(done)

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.calls is not None:
            self.calls.close()


class IoOnly(Workload):
    """Bench only (:mod:`.protections`): the request's IO alone (a timer), uncounted: no CPU, no blocking."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(dataclasses.replace(settings, io="timer"))  # records nothing
        self.before_io = False

    def run(self) -> None:
        io = self.io()
        if io:
            time.sleep(io)

    async def run_async(self) -> None:
        io = self.io()
        if io:
            await asyncio.sleep(io)


def describe(settings: ServeSettings) -> str:
    """The work model in one log line's words."""
    return " ".join(f"{name}={value}" for name, value in info(settings).items())
