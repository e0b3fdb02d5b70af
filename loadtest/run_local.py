"""Run the four echo servers natively, then Locust against them; stop the servers when Locust exits.

    python loadtest/run_local.py [locust arguments...]      (what `make locust` and `make loadtest` run)

The threaded server (thread-per-connection) listens on 127.0.0.1:9090 with
/metrics on 8000, the async one (uvloop) on 127.0.0.1:9091 with /metrics on
8001, both with ``--framing lines``; threaded-http on 9092 (/metrics 8002)
and async-http on 9093 (/metrics 8003). The servers' other settings come
from their ECHO_* environment variables (e.g. ECHO_DELAY_MS=10). The
arguments are Locust's, passed through; the servers' addresses are the
locustfile's defaults.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"
# name: (echo port, metrics port, options)
SERVERS = {
    "threaded": (9090, 8000, ["--framing", "lines", "--model", "thread-per-connection"]),
    "async": (9091, 8001, ["--framing", "lines", "--loop", "uvloop"]),
    "threaded-http": (9092, 8002, []),
    "async-http": (9093, 8003, []),
}


def listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def start_servers() -> list[subprocess.Popen[bytes]]:
    busy = [
        f"{HOST}:{port}"
        for port, metrics, _ in SERVERS.values()
        for port in (port, metrics)
        if listening(port)
    ]
    if busy:
        raise SystemExit(
            f"already in use: {', '.join(busy)} (a stack from `make up`, or servers left running?)"
        )
    servers = []
    for name, (port, metrics, extra) in SERVERS.items():
        command = [sys.executable, "-m", "echolab", "serve", name, "--host", HOST, "--port", str(port),
                   "--metrics-port", str(metrics), *extra]  # fmt: skip
        # Own session: Ctrl-C reaches Locust, and the servers are stopped after it, in order.
        servers.append(subprocess.Popen(command, start_new_session=True))
    # gunicorn's master binds its port before its workers run: connections wait in the backlog.
    deadline = time.monotonic() + 15
    for (name, (port, _, _)), server in zip(SERVERS.items(), servers, strict=True):
        while not listening(port):
            if server.poll() is not None or time.monotonic() > deadline:
                stop(servers)
                raise SystemExit(f"the {name} server did not start on {HOST}:{port}")
            time.sleep(0.05)
    return servers


def stop(servers: list[subprocess.Popen[bytes]]) -> None:
    for server in servers:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(args: list[str]) -> int:
    servers = start_servers()
    try:
        listening_on = [
            f"{name} {HOST}:{port} (metrics :{metrics})" for name, (port, metrics, _) in SERVERS.items()
        ]
        print("echo servers: " + ", ".join(listening_on))
        if "--headless" not in args:
            port = args[args.index("--web-port") + 1] if "--web-port" in args else "8089"
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
    finally:
        stop(servers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
