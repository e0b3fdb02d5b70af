"""Process plumbing every server shares: logging, fd limits, accept errors."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import signal
import sys
import time

log = logging.getLogger("echolab")

# accept() failures that mean "out of a resource", not "this client is bad":
# retrying at once would only spin, so the servers back off and log.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Signals whose default action would kill the TCP servers mid-request (a `kill -HUP`, a closing
# terminal, a log rotator's USR1). They have nothing to reload or reopen (settings are read at
# start, logs go to stderr), so they are logged and ignored; SIGTERM and SIGINT stop the server.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def setup_logging(level: str, server: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {server} %(message)s",
    )


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


def stop_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets; IGNORED_SIGNALS are logged and ignored meanwhile."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for sig in IGNORED_SIGNALS:
        loop.add_signal_handler(sig, ignore_signal, sig)
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
