"""Settings precedence, seen from outside: default < environment < flag (echo_server_info shows them)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_environment_is_used_when_there_is_no_flag(start_server):
    env = {"ECHO_DELAY_MS": "37", "ECHO_FRAMING": "lines", "ECHO_MODEL": "pool", "ECHO_THREADS": "7"}
    server = start_server("threaded", env=env)
    info = server.scrape().labels("echo_server_info")
    assert info == {
        "server": "threaded",
        "model": "pool",
        "framing": "lines",
        "delay_ms": "37",
        "threads": "7",
    }
    # The framing is not just a label: the server speaks lines.
    with server.connect() as conn:
        conn.send(b"one\ntwo\n")
        assert [conn.line(), conn.line()] == [b"ONE\n", b"TWO\n"]


def test_flag_wins_over_environment(start_server):
    env = {"ECHO_DELAY_MS": "37", "ECHO_FRAMING": "lines", "ECHO_LOOP": "asyncio"}
    server = start_server("async", "--delay-ms", "20", "--framing", "oneshot", "--loop", "uvloop", env=env)
    info = server.scrape().labels("echo_server_info")
    assert info == {"server": "async", "loop": "uvloop", "framing": "oneshot", "delay_ms": "20"}


def test_defaults_without_environment_or_flag(start_server):
    server = start_server("threaded", env={"ECHO_DELAY_MS": ""})  # empty counts as unset
    info = server.scrape().labels("echo_server_info")
    assert info == {
        "server": "threaded",
        "model": "thread-per-connection",
        "framing": "oneshot",
        "delay_ms": "100",
        "threads": "64",
    }


def test_bad_environment_value_names_the_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")} | {"ECHO_DELAY_MS": "soon"}
    result = subprocess.run(
        [sys.executable, "-m", "echolab", "serve", "threaded"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ECHO_DELAY_MS" in result.stderr
    assert "Traceback" not in result.stderr
