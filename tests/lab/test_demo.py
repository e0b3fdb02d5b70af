"""`echolab demo` end to end, small: every server and level lands in the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_writes_a_complete_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "echolab",
            "demo",
            "--levels",
            "1,4,12",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--delay-ms",
            "20",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (folder,) = tmp_path.glob("demo-*")
    data = json.loads((folder / "results.json").read_text())
    seen = {(r["server"], r["connections"]) for r in data["rows"]}
    # The serial baseline only runs at low concurrency (up to 10 connections).
    servers = ("threaded", "async", "threaded-http", "async-http")
    assert seen == {(s, n) for s in servers for n in (1, 4, 12)} | {("serial", 1), ("serial", 4)}
    assert all(r["requests"] > 0 for r in data["rows"])
    page = (folder / "index.html").read_text()
    assert page.count("<svg") == 3
    for title in ("Throughput vs concurrency", "Client-side latency vs concurrency", "Server CPU"):
        assert title in page
    assert (folder / "results.csv").read_text().count("\n") == len(data["rows"]) + 1
    assert "report:" in done.stdout
