"""Every server of the catalogue natively, then Locust against them; the servers stop when Locust exits.

    python -m echolab.lab.locust_local [locust arguments...]   (what `make locust` and `make loadtest` run)

Each server listens on 127.0.0.1 at its catalogue port (threaded 9090 with
/metrics on 8000, async 9091/8001, threaded-http 9092/8002, async-http
9093/8003), the TCP ones speaking ``lines``. Their other settings come from
their ECHO_* variables (e.g. ECHO_DELAY_MS=10). The arguments are Locust's,
passed through; the servers' addresses are the locustfile's defaults, which
come from the same catalogue.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator

from ..catalogue import SERVERS
from ..launcher import HOST, LaunchError, Process, accepts, serve_argv

DEFAULT_WEB_PORT = 8089


@contextlib.contextmanager
def servers() -> Iterator[list[Process]]:
    busy = [f"{HOST}:{p}" for s in SERVERS for p in (s.port, s.metrics_port) if accepts(HOST, p)]
    if busy:
        raise SystemExit(
            f"already in use: {', '.join(busy)} (a stack from `make up`, or servers left running?)"
        )
    started: list[Process] = []
    try:
        for server in SERVERS:
            argv = serve_argv(server.name, HOST, server.port, server.metrics_port, ())
            process = Process(argv, name=server.name, port=server.port)
            started.append(process)
            process.start()
        yield started
    except LaunchError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        for process in reversed(started):
            with contextlib.suppress(LaunchError):
                process.stop()


def option(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else default


def main(args: list[str]) -> int:
    with servers() as running:
        for process in running:
            print(f"echo server {process.name}: {HOST}:{process.port}  (logs: {process.log_path})")
        if "--headless" not in args:
            port = option(args, "--web-port", str(DEFAULT_WEB_PORT))
            print(f"Locust web UI: http://{HOST}:{port}  (Ctrl-C stops Locust and the servers)", flush=True)
        locust = subprocess.Popen([sys.executable, "-m", "locust", "--web-host", HOST, *args])
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
