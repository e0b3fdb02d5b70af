"""The demo survives a server that cannot start, dies mid-level or does not stop when told.

Real servers, made to misbehave from outside as a machine would: an address that is not
this host's, a SIGKILL while a level runs, a SIGSTOP (a process that does not act on
SIGTERM). The demo goes on with the rest, writes its report with each failure in one
line, and exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from support.parallel import with_demo_runs
from support.processes import alive, descendants
from support.servers import clean_environment
from support.waiting import poll_until

from echolab import scenarios
from echolab.lab import demo
from echolab.scenarios import Scenario
from echolab.settings import DemoSettings

FAST = Scenario("fast", "40 ms of awaited IO per request", ("--delay-ms", "40"), 40.0)
# TEST-NET-1 (RFC 5737): never an address of this host, so no server can bind it.
ELSEWHERE = Scenario(
    "elsewhere", "servers told to listen on another host's address", ("--host", "192.0.2.1"), 40.0
)


@with_demo_runs
def test_a_server_that_cannot_start_is_a_failed_level_and_the_demo_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = DemoSettings(
        scenario=("elsewhere", "fast"), servers=("threaded", "async"), levels=(4,), other_levels=(4,),
        open_loop=False, duration=0.3, other_duration=0.3, warmup=0.1, out=tmp_path,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(scenarios.SCENARIOS, ELSEWHERE.name, ELSEWHERE)
        patch.setitem(scenarios.SCENARIOS, FAST.name, FAST)
        assert demo.run(settings) == 1
    (folder,) = tmp_path.glob("demo-*")
    data = json.loads((folder / "results.json").read_text())
    failed = {(f["section"], f["server"], f["level"]) for f in data["failures"]}
    assert failed == {("elsewhere-closed", "threaded", 4), ("elsewhere-closed", "async", 4)}
    for failure in data["failures"]:
        assert "while starting" in failure["why"] and "Cannot assign requested address" in failure["why"]
    rows = {(r["scenario"], r["server"]): r for r in data["rows"]}
    assert rows["elsewhere", "threaded"]["failure"] and rows["elsewhere", "threaded"]["throughput"] == 0
    assert all(
        rows["fast", s]["failure"] is None and rows["fast", s]["requests"] > 0 for s in ("threaded", "async")
    )
    assert (
        "<strong>Failed</strong>: 2 failures: threaded (elsewhere-closed, level 4)"
        in (folder / "index.html").read_text()
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "echolab demo: 2 failures: threaded (elsewhere-closed, level 4): "
    )


def serving(seen: dict[psutil.Process, str], server: str) -> psutil.Process | None:
    """The live ``echolab serve`` process of ``server`` (not the serial baseline), while a client
    measures it."""
    found = [
        p
        for p, command in seen.items()
        if alive(p) and f" serve {server} " in command and "--model serial" not in command
    ]
    measuring = any(" bench " in command and alive(p) for p, command in seen.items())
    return found[0] if found and measuring else None


@with_demo_runs
def test_a_server_that_dies_mid_level_or_does_not_stop_is_killed_and_the_rest_measured(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, "-m", "echolab", "demo", "--scenario", "io", "--servers", "threaded,async,serial",
            "--levels", "10,20", "--no-open-loop", "--duration", "1", "--warmup", "0.2",
            "--stop-timeout", "1", "--out", str(tmp_path)]  # fmt: skip
    run = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_environment(),
        start_new_session=True,
    )  # fmt: skip
    seen: dict[psutil.Process, str] = {}

    def measuring(server: str) -> psutil.Process | None:
        seen.update(descendants(run.pid))
        return serving(seen, server)

    def ended() -> str:
        return "" if run.poll() is None else "the demo ended first"

    try:
        # While a client measures it: the threaded server dies, the async server stops acting on signals.
        poll_until(lambda: measuring("threaded"), what="threaded measured", timeout=60, gone=ended).kill()
        stubborn = poll_until(lambda: measuring("async"), what="async measured", timeout=60, gone=ended)
        stubborn.send_signal(signal.SIGSTOP)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 1, err
    assert "Traceback" not in out + err, err
    assert [p.pid for p in seen if alive(p)] == []  # the stubborn server too: killed, with all it started
    (folder,) = tmp_path.glob("demo-*")
    data = json.loads((folder / "results.json").read_text())
    why = {f["server"]: f["why"] for f in data["failures"]}
    assert set(why) == {"threaded", "async"}
    assert "threaded exited with -9 mid-level" in why["threaded"]
    assert why["async"].startswith("async did not exit within 1s of SIGTERM, killed;")
    (died,) = [r for r in data["rows"] if r["server"] == "threaded" and r["failure"]]
    assert died["failure"] == why["threaded"]
    assert [r["requests"] > 0 for r in data["rows"] if r["server"] == "serial"] == [True]  # measured after
    page = (folder / "index.html").read_text()
    assert f"it failed: {why['threaded']}" in page.replace("&#x27;", "'")
    assert err.strip().splitlines()[-1].startswith("echolab demo: 2 failures: ")
