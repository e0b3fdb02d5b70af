"""Process plumbing every server shares: logging, fd limits, accept errors."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import faulthandler
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

log = logging.getLogger("echolab")

# accept() failures that mean "out of a resource", not "this client is bad":
# retrying at once would only spin, so the servers back off and log.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# After an error reply the servers stop writing and read and drop what the client still sends,
# for this long at most (and async-http this much), before they close: closing with unread input
# makes the kernel reset the connection, which can destroy the error before the client reads it.
# (threaded-http keeps gunicorn's own numbers.)
LINGER_SECONDS = 1.0
LINGER_BYTES = 65536

# Signals whose default action would kill the TCP servers mid-request (a `kill -HUP`, a closing
# terminal, a log rotator's USR1). They have nothing to reload or reopen (settings are read at
# start, logs go to stderr), so they are logged and ignored; SIGTERM and SIGINT stop the server.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After the drain timeout, what cutting the rest and exiting may take before a server that is still
# there says what holds it up (StopWatch), in a line that begins so.
STOP_MARGIN = 1.0
STILL_STOPPING = "still stopping"
# A service not listening this long after it began to start dumps every thread's stack to its log,
# so that one hanging on its way up shows where (a launcher gives up on it at 30 s).
START_WATCH = 10.0


# The dependencies' libraries log a line per call (httpx each request at INFO, psycopg_pool each
# connection handed out and returned): per-request lines, which the servers log only at debug.
LIBRARY_LOGGERS = ("httpx", "psycopg.pool")


def setup_logging(level: str, server: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {server} %(message)s",
    )
    if level != "debug":
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def watch_start(seconds: float = START_WATCH) -> None:
    """Until :func:`listening`: past ``seconds``, every thread's stack goes to the log, from
    faulthandler's own thread, so that a main thread or an event loop that is stuck still says where."""
    faulthandler.dump_traceback_later(seconds, file=sys.stderr)


def end_start_watch() -> None:
    faulthandler.cancel_dump_traceback_later()


def listening(where: str, *args: object) -> None:
    """The line launchers and users wait for ("listening on" ``where``); the start watch ends."""
    end_start_watch()
    log.info("listening on " + where, *args)


class CannotBind(OSError):
    """A port the server cannot listen on; the message says which, where and why."""


@contextlib.contextmanager
def binding(what: str, host: str, port: int) -> Iterator[None]:
    """Name the port in the error of a bind that fails: the echo port or the metrics port."""
    try:
        yield
    except CannotBind:
        raise
    except OSError as exc:
        # The errno's own words: uvloop's message repeats the address, in its own words.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CannotBind(f"the {what} port, {host}:{port}: {reason}") from exc


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one: 10k clients need 10k fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise RLIMIT_NOFILE above %d", soft)
    return soft


class AcceptErrorLog:
    """Logs resource exhaustion on accept once per episode, not once per retry."""

    def __init__(self, *, retry: str, every: float = 10.0) -> None:
        self._every = every
        self._retry = retry  # what happens to new connections meanwhile: servers differ
        self._last = -every
        self._suppressed = 0

    def failed(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            extra = f" ({self._suppressed} more since last report)" if self._suppressed else ""
            log.error(
                "accept failed: %s; existing connections keep being served, %s%s",
                exc.strerror or exc,
                self._retry,
                extra,
            )
            self._last, self._suppressed = now, 0
        else:
            self._suppressed += 1


def sweep_interval(idle_timeout: float, request_timeout: float) -> float:
    """How often a server visits its connections for their deadlines: a quarter of the shorter
    timeout, at most a second. One pass a tick costs next to nothing where a timer per connection
    and per request would cost every request; a deadline is met to within two ticks, never early."""
    return min(1.0, idle_timeout / 4, request_timeout / 4)


def ignore_signal(signum: int, *_: object) -> None:
    """The handler of IGNORED_SIGNALS: say so, do nothing else."""
    log.info("%s ignored (nothing to reload or reopen); SIGTERM or SIGINT stops", signal.Signals(signum).name)


def hold_signals() -> None:
    """Block SIGTERM, SIGINT and IGNORED_SIGNALS in this thread and in every thread it starts.

    Call it first, before any thread starts, then take the signals with :func:`wait_for_stop`.
    Linux hands a signal sent to a process to any of its threads that does not block it, and CPython
    runs a Python handler only in the main thread, once that thread next runs bytecode. A SIGTERM
    taken by another thread (the acceptor, starting the thread of a new connection) left the main
    thread asleep in an ``Event.wait()`` for ever: the server went on serving until it was killed.
    Blocked in every thread, a signal waits for the one thread that asks for it.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, *IGNORED_SIGNALS})


@contextlib.contextmanager
def no_signals_for_threads(signals: Iterable[int]) -> Iterator[None]:
    """Threads started in the block (and theirs) never take ``signals``: the main thread gets them.

    For a process whose main thread waits for its signals with a timeout (gunicorn's master): one
    taken by another thread waited for that timeout. (See :func:`hold_signals`.)
    """
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def wait_for_stop() -> str:
    """Sleep until SIGTERM or SIGINT arrives (after :func:`hold_signals`); return its name.

    IGNORED_SIGNALS that arrive meanwhile are logged and ignored.
    """
    while (signum := signal.sigwait({*STOP_SIGNALS, *IGNORED_SIGNALS})) in IGNORED_SIGNALS:
        ignore_signal(signum)
    return signal.Signals(signum).name


class StopWatch:
    """Says what a stopping server still waits for, if it is still there past its drain timeout.

    A thread started with the server waits until :meth:`arm` (given the drain timeout), then for
    that timeout and STOP_MARGIN: a server still there by then logs one line, what it waits for
    (``waiting_for()``), followed by the stack of every thread, so that its log shows where it hangs.
    :meth:`arm` does no more than set a float and an Event, so a signal handler may call it.
    """

    def __init__(self, waiting_for: Callable[[], str]) -> None:
        self.waiting_for = waiting_for
        self._armed = threading.Event()
        self._since = self._due = 0.0
        threading.Thread(target=self._watch, name="stop-watch", daemon=True).start()

    def arm(self, drain_timeout: float) -> None:
        self._since = time.monotonic()
        self._due = self._since + drain_timeout + STOP_MARGIN
        self._armed.set()

    def _watch(self) -> None:
        self._armed.wait()
        while (left := self._due - time.monotonic()) > 0:
            time.sleep(left)
        log.error(
            "%s %.1fs after the signal, past the drain timeout: waiting for %s; every thread's stack follows",
            STILL_STOPPING,
            time.monotonic() - self._since,
            self.waiting_for(),
        )
        faulthandler.dump_traceback(sys.stderr, all_threads=True)


def stop_event(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[str], None] | None = None
) -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets; IGNORED_SIGNALS are logged and ignored meanwhile.

    The stop signals get a ``signal.signal`` handler, not the loop's: it runs between two bytecodes
    of the loop's thread, even inside a callback that holds the loop up, where a handler of
    ``loop.add_signal_handler`` waits for the loop. It calls ``on_signal`` with the signal's name,
    once, which must do only what is safe in a signal handler, and sets the event through
    ``call_soon_threadsafe``, which is. (add_signal_handler, for the others, also points the loop's
    wakeup fd at its own pipe, as uvloop does anyway: a signal taken by another thread, an offload
    pool's, still wakes the loop, so the handler runs.)
    """
    stop = asyncio.Event()
    heard: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not heard:
            heard.append(signum)
            if on_signal is not None:
                on_signal(signal.Signals(signum).name)
            loop.call_soon_threadsafe(stop.set)

    for sig in IGNORED_SIGNALS:
        loop.add_signal_handler(sig, ignore_signal, sig)
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return stop


def log_drain(in_flight: int, unanswered: int, cut: int, seconds: float) -> None:
    """The drain's end: of the requests in flight when it began, how many were answered; what was cut."""
    answered = max(0, in_flight - unanswered)
    if cut:
        log.warning(
            "drain timeout after %.1fs: %d of %d request(s) in flight answered; "
            "%d connection(s) cut, %d request(s) unanswered",
            seconds, answered, in_flight, cut, unanswered,
        )  # fmt: skip
    else:
        log.info("drained in %.1fs: %d request(s) in flight answered", seconds, answered)
