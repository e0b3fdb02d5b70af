"""Ctrl-C and SIGTERM for the lab's long runs: stop the children, keep the results, exit 130 or 143.

Inside :func:`interruptible`, either signal raises :class:`Interrupted` in
the main thread, wherever it is: the ``with`` blocks that started servers
and clients stop them as the exception unwinds (``subprocess.run`` kills its
client), and the caller writes what it measured so far, marked partial.
Once one signal has arrived, further ones are ignored, so that an impatient
second Ctrl-C cannot cut the cleanup short and orphan a server. While the
report is written, :func:`held` keeps both signals waiting: a report is
never left half-written.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, _frame: FrameType | None) -> None:
    for each in SIGNALS:
        signal.signal(each, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the block; the handlers before are restored after."""
    previous = {each: signal.signal(each, _raise) for each in SIGNALS}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM wait until the block is done; the list then holds the ones that arrived."""
    arrived: list[int] = []
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield arrived
    finally:
        for signum in sorted(signal.sigpending() & set(SIGNALS)):
            signal.sigwait({signum})  # taken off the pending set, not delivered
            arrived.append(signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
