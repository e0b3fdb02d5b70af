"""Every server of the catalogue natively, then Locust against them; the servers stop when Locust exits.

    python -m echolab.lab.locust_local [locust arguments...]   (what `make locust` and `make loadtest` run)

Each server listens on 127.0.0.1, the TCP ones speaking ``lines``: on the
port its ``LOCUST_<NAME>_PORT`` variable names (the one Locust reads too),
else its catalogue port (threaded 9090 with /metrics on 8000, async
9091/8001, threaded-http 9092/8002, async-http 9093/8003), else, when that
one is taken, any free port. Locust is told the ports in use, and the
banner prints them. The servers' other settings come from their ECHO_*
variables (e.g. ECHO_DELAY_MS=10). The arguments are Locust's, passed
through.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from .. import ports
from ..catalogue import SERVERS, Server
from ..launcher import HOST, LaunchError, Process, free_port, serve_argv


def bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` now (as the servers bind: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Ports:
    echo: int
    metrics: int
    moved: bool  # the catalogue's port was taken


def choose_ports(server: Server, environ: dict[str, str]) -> Ports:
    """The ports ``server`` will use; SystemExit when a port asked for by name is taken."""
    variable = server.locust_target[1].env
    if environ.get(variable):
        asked = int(environ[variable])
        if not bindable(asked):
            raise SystemExit(f"{HOST}:{asked} ({variable}) is in use: choose another port")
        echo, moved = asked, False
    else:
        echo, moved = (server.port, False) if bindable(server.port) else (free_port(), True)
    metrics = server.metrics_port if bindable(server.metrics_port) else free_port()
    return Ports(echo, metrics, moved or metrics != server.metrics_port)


@contextlib.contextmanager
def servers(environ: dict[str, str]) -> Iterator[list[tuple[Process, Ports]]]:
    started: list[tuple[Process, Ports]] = []
    try:
        for server in SERVERS:
            chosen = choose_ports(server, environ)
            argv = serve_argv(server.name, HOST, chosen.echo, chosen.metrics, ())
            process = Process(argv, name=server.name, port=chosen.echo)
            started.append((process, chosen))
            process.start()
        yield started
    except LaunchError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        for process, _ in reversed(started):
            with contextlib.suppress(LaunchError):
                process.stop()


def option(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else default


def main(args: list[str]) -> int:
    # Ctrl-C stops it all, as the banner says, even where the shell that started it ignores SIGINT
    # (a background job's does): a handled signal is a default one again in Locust, started below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    web_port = int(option(args, "--web-port", os.environ.get("LOCUST_WEB_PORT") or str(ports.LOCUST_WEB)))
    headless = "--headless" in args
    if not headless and not bindable(web_port):
        raise SystemExit(f"{HOST}:{web_port} is in use: choose another port with LOCUST_WEB_PORT=PORT")
    with servers(dict(os.environ)) as running:
        addresses = []
        for process, chosen in running:
            note = " (its usual port was taken)" if chosen.moved else ""
            print(
                f"echo server {process.name}: {HOST}:{chosen.echo}, metrics "
                f"http://{HOST}:{chosen.metrics}/metrics{note}  (log: {process.log_path})"
            )
            addresses += [f"--{process.name}-host", HOST, f"--{process.name}-port", str(chosen.echo)]
        if not headless:
            print(
                f"Locust web UI: http://{HOST}:{web_port}  (Ctrl-C stops Locust and the servers)", flush=True
            )
        web = [] if headless else ["--web-host", HOST, "--web-port", str(web_port)]
        locust = subprocess.Popen([sys.executable, "-m", "locust", *web, *addresses, *args])
        # Passed on as Ctrl-C: a headless shape run installs its SIGTERM handler only after the
        # shape ends, so SIGTERM would kill Locust before it writes its report.
        signal.signal(signal.SIGTERM, lambda *_: locust.send_signal(signal.SIGINT))
        while True:
            try:
                return locust.wait()
            except KeyboardInterrupt:
                continue  # Locust got the same Ctrl-C and is shutting down; wait for it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
