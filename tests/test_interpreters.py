"""Servers under another CPython: found, given a venv of their own, and named in every result.

These need a CPython besides the one running the tests (pyenv's 3.12 or 3.13
here): without one they fail, saying how to get one; they never skip. They
share one worker (the venv is made once, the first time).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from support.servers import TestServer, run_command

from echolab import interpreters
from echolab.catalogue import server
from echolab.interpreters import Venv
from echolab.lab.contenders import of

pytestmark = pytest.mark.xdist_group("interpreters")


@pytest.fixture(scope="module")
def other() -> Venv:
    """The venv of a CPython other than this one, made on first use (its progress lines printed)."""
    found = interpreters.others()
    if not found:
        pytest.fail(
            f"no CPython besides {interpreters.here().version}: python -m echolab.interpreters", pytrace=False
        )
    return interpreters.venv(found[0], print)


def test_a_server_under_another_python_answers_and_says_which(
    other: Venv, start_server: Callable[..., TestServer]
) -> None:
    served = start_server("async", "--python", other.interpreter.executable, "--delay-ms", "0")
    assert served.exchange(b"hello") == b"HELLO\n"
    info = served.scrape().labels("echo_server_info")
    assert info["python"] == other.interpreter.facts()["python"] != interpreters.here().facts()["python"]
    assert info["gil"] == "on"
    assert info["loop"] == "uvloop"


def test_the_demo_runs_a_row_per_interpreter_with_its_version_gil_and_loop(
    other: Venv, tmp_path: Path
) -> None:
    done = run_command(
        "demo", "--scenario", "io", "--servers", "threaded,async", "--pythons", other.interpreter.executable,
        "--levels", "1", "--no-open-loop", "--duration", "0.3", "--warmup", "0", "--out", str(tmp_path),
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (results,) = tmp_path.glob("demo-*/results.json")
    rows = json.loads(results.read_text())["rows"]
    tag, mine = other.interpreter.tag, interpreters.here()
    seen = {(r["server"], r["python"], r["gil"], r["loop"]) for r in rows}
    assert seen == {
        ("threaded", mine.facts()["python"], "on", "none"),
        (f"threaded@{tag}", other.interpreter.facts()["python"], "on", "none"),
        ("async", mine.facts()["python"], "on", "uvloop"),
        (f"async@{tag}", other.interpreter.facts()["python"], "on", "uvloop"),
    }
    assert other.interpreter.version in done.stdout  # the table's python column


def script(folder: Path, body: str) -> str:
    path = folder / "python3"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


OLD = json.dumps(
    {"implementation": "cpython", "version": "3.9.18", "free_threaded": False, "gil": True, "executable": "x"}
)


@pytest.mark.parametrize("kind", ["missing", "broken", "too old"])
def test_an_interpreter_that_cannot_run_a_server_is_one_line_and_exit_2(kind: str, tmp_path: Path) -> None:
    spec = {
        "missing": lambda: str(tmp_path / "no-such-python"),
        "broken": lambda: script(tmp_path, "echo 'Fatal Python error: init_fs_encoding' >&2; exit 1"),
        "too old": lambda: script(tmp_path, f"echo '{OLD}'"),  # what a 3.9 says to the probe
    }[kind]()
    for argv in (("serve", "async", "--python", spec), ("demo", "--pythons", spec, "--out", str(tmp_path))):
        done = run_command(*argv)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "error:" in line and "Traceback" not in done.stderr
        assert {"missing": "no such interpreter", "broken": "exit 1", "too old": "needs 3.11"}[kind] in line


def test_a_dependency_that_will_not_install_takes_away_only_what_needs_it(
    other: Venv, tmp_path: Path
) -> None:
    # A constraint no release meets: pip really fails to install asyncpg there, as it does for an
    # interpreter without its wheel (in the venv made already: the others are there, and stay).
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("asyncpg==0.0.1\n")
    env = {**os.environ, "PIP_CONSTRAINT": str(constraints)}
    wanted = interpreters.requirements(interpreters.source_tree())
    unavailable = interpreters.install_what_installs(interpreters.pip_install(other.path), wanted, env)

    assert set(unavailable) == {"asyncpg"}
    assert "asyncpg" in unavailable["asyncpg"] and "\n" not in unavailable["asyncpg"]
    crippled = Venv(other.path, other.interpreter, unavailable)
    refused = crippled.refuses("async", {"io": "postgres", "db_driver": "asyncpg"})
    assert refused is not None and refused.startswith("asyncpg: ")
    assert f"--db-driver asyncpg is not available under python{other.interpreter.tag}" in refused
    assert crippled.refuses("async", {"io": "postgres", "db_driver": "psycopg"}) is None
    # The other servers run there.
    process = of(server("threaded")).under(crippled).process(delay_ms=0)
    try:
        process.start()
        assert process.running()
    finally:
        process.stop()
