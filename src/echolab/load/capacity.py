"""How many requests/s one Locust process can generate with our user.

A load generator that saturates first measures itself, not the server; the
benchmark calls :func:`measure_capacity` against a delay-0 server to know the
ceiling of one Locust process. Locust runs in a subprocess: importing it here
would monkey-patch the caller (the asyncio benchmark) for gevent.

Usage: ``python -m echolab.load.capacity [--seconds 15] [--users 50]`` starts
``echolab serve async --delay-ms 0 --framing lines`` on a free port, measures,
prints requests/s and stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..catalogue import server
from ..launcher import serving
from ..settings import LocustSettings

# The repo's locustfile (an editable install); in the Locust image, LOCUST_LOCUSTFILE names it.
LOCUSTFILE = Path(__file__).resolve().parents[3] / "loadtest" / "locustfile.py"


def default_locustfile() -> Path:
    if LOCUSTFILE.is_file() or "LOCUST_LOCUSTFILE" not in os.environ:
        return LOCUSTFILE
    return Path(os.environ["LOCUST_LOCUSTFILE"].split(",")[0])


def measure_capacity(
    host: str,
    port: int,
    seconds: float = 15.0,
    users: int = 50,
    framing: str = "lines",
    locustfile: Path | str | None = None,
) -> float:
    """Run one headless Locust process (AsyncUser) against ``host:port``; return its requests/s.

    The rate is what Locust reports as the run's requests/s: requests
    completed, over the time from the start to the last one, from the final
    stats (``--json-file``). All users start within the first second. Raises
    RuntimeError if Locust fails or any request failed (a rate of failures
    measures nothing). Locust's LOCUST_* environment variables are not passed
    on: the measurement is of these settings only.
    """
    locustfile = Path(locustfile or default_locustfile()).resolve()
    if not locustfile.is_file():
        raise FileNotFoundError(f"no locustfile at {locustfile}")
    with tempfile.TemporaryDirectory(prefix="echolab-capacity-") as tmp:
        prefix = os.path.join(tmp, "capacity")
        command = [
            sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
            "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s", "--json-file", prefix,
            "--async-host", host, "--async-port", str(port), "--framing", framing,
            "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--loglevel", "WARNING", "AsyncUser",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(LocustSettings.PREFIX)}
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=seconds + 60)
        try:
            with open(prefix + ".json") as stats:
                (entry,) = json.load(stats)  # one user class, one server: one entry
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"locust exited {done.returncode} without stats:\n{done.stderr[-2000:]}"
            ) from exc
        if done.returncode != 0 or entry["num_failures"]:
            raise RuntimeError(
                f"locust exited {done.returncode}, {entry['num_failures']} of {entry['num_requests']} "
                f"requests failed:\n{done.stderr[-2000:]}"
            )
        return float(entry["num_requests"] / (entry["last_request_timestamp"] - entry["start_time"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m echolab.load.capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="how long Locust runs")
    parser.add_argument("--users", type=int, default=50, help="concurrent users (connections)")
    parser.add_argument("--framing", choices=("lines", "oneshot"), default="lines")
    args = parser.parse_args(argv)
    options = ("--delay-ms", "0", "--framing", args.framing)
    with serving(server("async"), options) as echo:
        rate = measure_capacity(echo.host, echo.port, args.seconds, args.users, args.framing)
    print(
        f"one Locust process, {args.users} users, {args.framing}, {args.seconds:g}s against "
        f"echolab serve async --delay-ms 0: {rate:,.0f} requests/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
