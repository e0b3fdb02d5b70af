"""`echolab compare`: two runs, matched measurement by measurement, in a table with ratios and one report."""

from __future__ import annotations

import json
import re
from pathlib import Path

from support.parallel import with_demo_runs
from support.servers import run_command

from echolab.catalogue import server
from echolab.lab.contenders import of, running


@with_demo_runs
def test_two_demos_compared(demo_runs: tuple[Path, Path], tmp_path: Path) -> None:
    first, latest = demo_runs
    done = run_command(
        "compare", str(first), str(latest / "results.json"), "--out", str(tmp_path), timeout=120
    )
    assert done.returncode == 0, done.stderr
    # The later run measured async at 4 connections in the fast scenario only: that is what they share.
    latest_rows = json.loads((latest / "results.json").read_text())["rows"]
    (shared,) = latest_rows
    assert re.search(r"async .* 4 connections .* \d+\.\d\dx", done.stdout)
    (index,) = tmp_path.glob("compare-*/index.html")
    page = index.read_text()
    assert page.count("<section") == 1
    assert page.count("<svg") == 2
    assert "async (A)" in page and "async (B)" in page
    assert f"{shared['throughput']:,.0f}" in page


def test_two_bench_results_compared(tmp_path: Path) -> None:
    results = []
    with running(of(server("async")), delay_ms=10) as (port, _):
        for name in ("a.json", "b.json"):
            done = run_command(
                "bench", f"127.0.0.1:{port}", "--json", "--connections", "10", "--duration", "0.5",
                "--warmup", "0", "--delay-hint-ms", "10",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            (tmp_path / name).write_text(done.stdout)
            results.append(json.loads(done.stdout))
    done = run_command("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    ratio = results[1]["throughput"] / results[0]["throughput"]
    assert f"{ratio:.2f}x" in done.stdout
    assert len(list(tmp_path.glob("compare-*/index.html"))) == 1


def test_something_that_is_not_a_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    done = run_command("compare", str(tmp_path / "x.json"), str(tmp_path / "missing"), "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"echolab compare: error: {tmp_path / 'x.json'}: not a result of echolab (no rows, no bench result)"
    ]
