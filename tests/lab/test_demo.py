"""`echolab demo` end to end, small: every scenario is a section, every server and level lands in it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from support.parallel import with_demo_runs
from support.processes import alive, descendants
from support.servers import clean_environment
from support.waiting import poll_until

from echolab import scenarios
from echolab.lab import demo
from echolab.settings import DemoSettings


@with_demo_runs
def test_every_scenario_is_a_section_with_every_server_and_level(demo_runs: tuple[Path, Path]) -> None:
    first, _ = demo_runs
    data = json.loads((first / "results.json").read_text())
    assert [s["scenario"] + "-" + s["mode"] for s in data["sections"]] == [
        "fast-closed",
        "fast-open",
        "slower-closed",
    ]
    seen = {(r["scenario"], r["mode"], r["server"], r["connections"] if r["mode"] == "closed" else r["rate"])
            for r in data["rows"]}  # fmt: skip
    # The serial baseline runs in the first scenario only, and stops under half the bound (at 4
    # connections it gives a quarter); the open loop has no oneshot server.
    assert seen == (
        {("fast", "closed", s, n) for s in ("threaded", "async") for n in (1, 4, 8)}
        | {("fast", "closed", "serial", n) for n in (1, 4)}
        | {("fast", "open", s, 100) for s in ("threaded", "async")}
        | {("slower", "closed", s, 4) for s in ("threaded", "async")}
    )
    assert all(r["requests"] > 0 for r in data["rows"])
    assert {r["delay_ms"] for r in data["rows"] if r["scenario"] == "slower"} == {120.0}
    assert data["partial"] is None
    assert data["skipped"] == [
        {
            "section": "fast-closed",
            "server": "serial",
            "why": "under 50% of the bound at 4 connections",
            "levels": [8],
            "cut": False,
        }
    ]
    assert data["machine"]["cores"] == os.cpu_count()
    page = (first / "index.html").read_text()
    for key, sentence in data["findings"].items():
        assert f'<section id="{key}">' in page
        assert sentence.split(":")[0] in page  # the scenario's summary opens its finding
    assert page.count("<section") == 3
    assert page.count("<svg") == 3 * 4
    assert (first / "results.csv").read_text().count("\n") == len(data["rows"]) + 1


@with_demo_runs
def test_the_report_lists_earlier_runs(demo_runs: tuple[Path, Path]) -> None:
    first, latest = demo_runs
    page = (latest / "index.html").read_text()
    assert f'href="../{first.name}/index.html"' in page
    assert "echolab compare" in page


def test_quick_reaches_the_levels_where_threads_break() -> None:
    steps = demo.plan(demo.quick(DemoSettings(quick=True)))
    (threaded,) = [s for s in steps if s.section.key == "io-closed" and s.contender.name == "threaded"]
    assert {2000, 5000} <= set(threaded.levels)
    assert any(s.section.mode == "open" for s in steps)
    assert demo.quick(DemoSettings(quick=True)).duration < DemoSettings().duration


def test_an_unknown_scenario_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.run(DemoSettings(scenario=("nosuch",))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"echolab demo: error: no scenario nosuch: choose from {', '.join(scenarios.SCENARIOS)}"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_demo_stops_everything_and_keeps_a_partial_report(
    tmp_path: Path, signum: int, code: int
) -> None:
    argv = [sys.executable, "-m", "echolab", "demo", "--scenario", "io", "--levels", "1,10,100,1000",
            "--duration", "1", "--warmup", "0.2", "--out", str(tmp_path)]  # fmt: skip
    # Its own session, as a shell job: Ctrl-C at a terminal reaches the whole foreground group.
    run = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(run.stdout or []), daemon=True)
    reader.start()
    seen: dict[psutil.Process, str] = {}

    def measuring_the_next_level() -> bool:
        seen.update(descendants(run.pid))
        running = [command for process, command in seen.items() if alive(process)]
        return any("req/s" in line for line in output) and any(" bench " in c for c in running)

    def ended() -> str:
        return "" if run.poll() is None else "the demo ended before it could be interrupted"

    try:
        # Interrupt once a level is done and the next one's client is running against a server.
        poll_until(measuring_the_next_level, what="a level measured and the next one's client running",
                   timeout=120, gone=ended)  # fmt: skip
        if signum == signal.SIGINT:
            os.killpg(run.pid, signum)
        else:
            run.send_signal(signum)
        _, err = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    reader.join(5)
    assert run.returncode == code, err
    assert "Traceback" not in err + "".join(output)
    assert any(" serve " in command for command in seen.values())  # a server was running...
    assert [p.pid for p in seen if alive(p)] == []  # ...and nothing it started is left
    (folder,) = tmp_path.glob("demo-*")
    data = json.loads((folder / "results.json").read_text())
    assert data["partial"]["signal"] == signal.Signals(signum).name
    assert 0 < data["partial"]["levels_done"] < data["partial"]["levels_planned"]
    assert len(data["rows"]) == data["partial"]["levels_done"]
    page = (folder / "index.html").read_text()
    assert "Partial run" in page
    # The sweep under way when the signal came is noted as cut off, with the levels it did not reach.
    (cut,) = [s for s in data["skipped"] if s["cut"]]
    assert cut["why"] == f"cut off by {signal.Signals(signum).name}" and cut["levels"]
    assert f"{cut['server']}: {cut['why']}; not measured: " in page
