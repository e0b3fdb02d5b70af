"""Ctrl-C and SIGTERM in the lab's long runs: raised where the run is, held while a report is written."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from echolab.lab.interrupt import Interrupted, held, interruptible


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raises_interrupted_and_a_second_one_is_ignored(signum: int, code: int) -> None:
    before = signal.getsignal(signum)
    with interruptible():
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0)  # a point where Python runs the handler
        # Cleaning up: an impatient second Ctrl-C (or SIGTERM) must not cut it short.
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)
    assert caught.value.exit_code == code
    assert signal.getsignal(signum) == before  # restored after the block


def test_signals_wait_while_a_report_is_written() -> None:
    # To the thread that writes: in the lab's process, which has no other thread by then, a signal
    # to the process lands there; a pytest-xdist worker has more threads, which would not hold it.
    writer = threading.get_ident()
    with held() as arrived:
        signal.pthread_kill(writer, signal.SIGTERM)  # would end the process, were it not held
        signal.pthread_kill(writer, signal.SIGINT)
        assert arrived == []
    assert arrived == [signal.SIGINT, signal.SIGTERM]
