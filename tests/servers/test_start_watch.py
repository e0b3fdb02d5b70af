"""A service stuck on its way up says where: the start watch (echolab.runtime.watch_start)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from support.waiting import poll_until

# A service's start, as `echolab serve` runs it, stuck before it listens (a watch of a tenth of a
# second, where the services' is START_WATCH).
STUCK = textwrap.dedent(
    """
    import threading
    from echolab.runtime import watch_start

    watch_start(0.1)

    def connecting_to_a_dependency_that_never_answers():
        threading.Event().wait()

    connecting_to_a_dependency_that_never_answers()
    """
)


def test_a_service_not_listening_in_time_logs_every_threads_stack_and_goes_on(tmp_path):
    log = tmp_path / "stuck.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", STUCK], stderr=out)
    try:
        said = poll_until(
            log.read_text,
            lambda text: "connecting_to_a_dependency_that_never_answers" in text,
            what="the stuck start's stack in its log",
            gone=lambda: "" if process.poll() is None else f"it exited with {process.returncode}",
        )
        assert "most recent call first" in said
        assert process.poll() is None  # a report, not an exit: the launcher decides
    finally:
        process.kill()
        process.wait()
