"""Start a child process, wait until it is ready, stop it: the one launcher every caller uses.

The demo, the benchmark, the Locust capacity measurement, the native Locust
runner and the tests all start ``echolab serve`` (or Locust, or Prometheus)
the same way: on free loopback ports, with the child's output in a log
file, ready once its port accepts or its health URL answers, and stopped
with SIGTERM, then SIGKILL after a timeout with an error that says so.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import psutil

from .catalogue import Server
from .runtime import STILL_STOPPING
from .settings import STOP_TIMEOUT

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
PORT_ATTEMPTS = 3  # a free port can be taken by another process before the child binds it
LOG_TAIL = 3000


class LaunchError(RuntimeError):
    """A child did not start, or did not stop when asked; the message ends with its log's tail."""

    @property
    def summary(self) -> str:
        """The message's first line: what went wrong, and what the child logged last."""
        return str(self).splitlines()[0]


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (whatever else listens there, an echo server say: no)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself has a socket listening on ``port``."""
    with contextlib.suppress(psutil.Error):
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for c in psutil.Process(pid).net_connections(kind="tcp")
        )
    return False


class Process:
    """One child process: its command, its log file, its lifetime; ``port``, if it listens on one."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        host: str = HOST,
        port: int = 0,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.host = host
        self.port = port
        self.log_path = log or Path(tempfile.mkstemp(prefix=f"echolab-{name}-", suffix=".log")[1])
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.signalled = False

    def spawn(self) -> Process:
        with self.log_path.open("ab") as log:
            # Own session: a Ctrl-C at the terminal reaches the caller only, which stops its children.
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, env=self.env, cwd=self.cwd, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        return self.log[-LOG_TAIL:]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def is_ready(self) -> bool:
        """Its port accepts connections (a process without one is ready once started)."""
        return not self.port or accepts(self.host, self.port)

    def start(self, timeout: float = READY_TIMEOUT) -> Process:
        """Spawn it and wait until it is ready; LaunchError if it exits first."""
        self.spawn()
        if not self.wait_ready(self.is_ready, timeout):
            assert self.proc is not None
            raise self.failed(f"{self.name} exited with {self.proc.returncode} while starting")
        return self

    def wait_ready(self, ready: Callable[[], bool], timeout: float = READY_TIMEOUT) -> bool:
        """Poll ``ready`` until it holds (True), or the process exits (False); raise after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running():
                return False
            if time.monotonic() > deadline:
                raise self.failed(f"{self.name} not ready after {timeout:g}s")
            time.sleep(0.02)
        return True

    def send(self, signum: int = signal.SIGTERM) -> None:
        self.signalled = True
        if self.running():
            os.kill(self.pid, signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT, signum: int = signal.SIGTERM) -> int:
        """Signal (SIGTERM) and wait up to ``timeout`` for the exit code; else SIGKILL it and
        everything it started, and raise."""
        if self.proc is None:
            return 0
        self.send(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LaunchError(
                f"{self.name} did not exit within {timeout:g}s of {signal.Signals(signum).name}, "
                f"killed; {self.last_word()}; its log: {self.log_path}\n{self.tail()}"
            ) from None

    def failed(self, what: str) -> LaunchError:
        """``what`` went wrong, with what the log said last and its tail."""
        return LaunchError(f"{what}; {self.last_word()}\n{self.tail()}")

    def last_word(self) -> str:
        """What the log says it was doing: what a stop overdue waited for (StopWatch), or its last line."""
        lines = self.log.splitlines()
        said = [line for line in lines if STILL_STOPPING in line] or [line for line in lines if line.strip()]
        return f"it logged: {said[-1].strip()}" if said else "its log is empty"

    def kill(self) -> None:
        """SIGKILL the process and everything it started (gunicorn's workers too)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def serve_argv(
    name: str, host: str, port: int, metrics_port: int, options: Sequence[str], python: str = sys.executable
) -> list[str]:
    return [
        python, "-m", "echolab", "serve", name,
        "--host", host, "--port", str(port), "--metrics-port", str(metrics_port), *options,
    ]  # fmt: skip


class ServerProcess(Process):
    """``echolab serve NAME`` on free loopback ports; ready when clients can be served."""

    def __init__(
        self,
        server: Server,
        options: Sequence[str] = (),
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        host: str = HOST,
        python: str = sys.executable,
    ) -> None:
        super().__init__([], name=server.name, log=log, env=env, host=host)
        self.server = server
        self.options = list(options)
        self.python = python  # the interpreter it runs under: another's venv's (echolab.interpreters)
        self.metrics_port = 0

    def is_ready(self) -> bool:
        """It listens on its port itself (a port free a moment ago can be another process's by the
        time it binds: it then exits and start() tries others), and the echo port accepts; for a
        server with a health path, that path answers."""
        if not listens(self.pid, self.port):
            return False
        path = self.server.transport.health_path
        if path:
            return answers(f"http://{self.host}:{self.port}{path}")
        return accepts(self.host, self.port)

    def start(self, timeout: float = READY_TIMEOUT) -> ServerProcess:
        for _attempt in range(PORT_ATTEMPTS):
            self.port, self.metrics_port = free_port(self.host), free_port(self.host)
            self.argv = serve_argv(
                self.server.name, self.host, self.port, self.metrics_port, self.options, self.python
            )
            self.spawn()
            if self.wait_ready(self.is_ready, timeout):
                return self
            if "in use" not in self.log:  # lost a free port to another process: try new ones
                break
        assert self.proc is not None
        raise self.failed(f"{self.name} server exited with {self.proc.returncode} while starting")


@contextlib.contextmanager
def serving(
    server: Server,
    options: Sequence[str] = (),
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """A ready server for the block; stopped with SIGTERM after it."""
    process = ServerProcess(server, options, log=log, env=env)
    try:
        yield process.start()
    finally:
        if process.running():
            process.stop()
