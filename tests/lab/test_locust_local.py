"""`make locust` / `make loadtest`: every server natively, then Locust, on the ports the variables name."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from support.parallel import CATALOGUE_PORTS
from support.servers import clean_environment
from support.waiting import poll_until

from echolab.launcher import HOST, accepts, answers, free_port

LOADTEST = Path(__file__).parent.parent.parent / "loadtest"


def locust_local(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "echolab.lab.locust_local", "-f", str(LOADTEST / "locustfile.py"),
         "--metrics-port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_environment(env),
        start_new_session=True,
    )  # fmt: skip


@CATALOGUE_PORTS
def test_loadtest_runs_the_servers_on_the_ports_asked_for_and_stops_them() -> None:
    port = free_port()
    run = locust_local("--headless", "-u", "2", "-r", "2", "-t", "3s", "--only-summary", "AsyncUser",
                       env={"LOCUST_ASYNC_PORT": str(port)})  # fmt: skip
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    assert f"echo server async: {HOST}:{port}," in out
    assert re.search(r"lines\s+async\s+[1-9]\d*\s+0\(0\.00%\)", out), out  # requests, no failures
    for line in re.findall(r"echo server \S+: (\S+):(\d+),", out):
        assert not accepts(line[0], int(line[1]))  # stopped with Locust


@CATALOGUE_PORTS
def test_the_web_ui_is_where_the_banner_says_and_ctrl_c_stops_it_all() -> None:
    web = free_port()
    run = locust_local("--class-picker", "--web-port", str(web), env={})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stdout or []), daemon=True)
    reader.start()
    try:
        url = f"http://{HOST}:{web}"
        poll_until(
            lambda: answers(url),
            what=f"the web UI answering at {url}",
            timeout=60,
            gone=lambda: "" if run.poll() is None else f"exited with {run.returncode}",
            context=lambda: "".join(lines),
        )
        assert f"Locust web UI: {url}  (Ctrl-C stops Locust and the servers)\n" in lines
        servers = [
            (h, int(p)) for line in lines for h, p in re.findall(r"echo server \S+: (\S+):(\d+),", line)
        ]
        assert len(servers) == 4
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C at the terminal
        run.wait(60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert not answers(url)
    assert not any(accepts(host, port) for host, port in servers)


def test_a_web_port_in_use_is_one_line() -> None:
    with socket.create_server((HOST, 0)) as taken:
        port = taken.getsockname()[1]
        run = locust_local("--web-port", str(port), env={})
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 1
    assert out.strip().splitlines() == [
        f"{HOST}:{port} is in use: choose another port with LOCUST_WEB_PORT=PORT"
    ]
