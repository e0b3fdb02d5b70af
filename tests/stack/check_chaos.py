"""Faults in the running stack, under load: server processes killed, a Locust worker lost, servers stopped.

Runs after check_stack.py, on the same stack and the same running load
(tests/stack/conftest.py). Each test makes one fault and asserts on what the
stack did about it: what was restarted, what Locust counted and of which
kind, what recovered. The waits are bounded; how long recovery took is
measured and printed with the timings, never asserted.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from typing import Any

from support.servers import TCP_SERVERS
from support.stack import (
    SERVERS,
    TIMINGS,
    USERS,
    Compose,
    Load,
    failures,
    inspect,
    users_per_server,
    wait_for,
)

# A request a server had read when its process died: the connection ends, or is reset, under it.
IN_FLIGHT = {"closed", "reset"}
# While a server is down its users meet, besides: its name resolving nowhere or its old address
# having no route (unreachable), nothing listening yet (refused), a connect running out of time.
OUTAGE = {*IN_FLIGHT, "refused", "unreachable", "timeout"}
# Run in a server's container: SIGKILL the server, tini's child (ppid 1), as a crash would end it.
KILL_SERVER = """\
import os, signal
for pid in filter(str.isdigit, os.listdir('/proc')):
    state, ppid = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[:2]
    if ppid == '1':
        os.kill(int(pid), signal.SIGKILL)
"""


def grown_since(stack: Compose, counted: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    """The failures counted since ``counted`` was, by (server, kind)."""
    grown = {key: value - counted.get(key, 0) for key, value in failures(stack).items()}
    return {key: value for key, value in grown.items() if value > 0}


def answered(stack: Compose) -> dict[str, int]:
    """Requests that succeeded, per server, in the master's stats (its workers report every 3 s)."""
    stats = stack.locust("/stats/requests")["stats"]
    return {s["name"]: s["num_requests"] - s["num_failures"] for s in stats if s["name"] in SERVERS}


def moment(timestamp: str) -> datetime.datetime:
    """Docker's timestamps have nanoseconds: Python takes microseconds."""
    return datetime.datetime.fromisoformat(timestamp[:26].rstrip("Z"))


def test_killed_servers_are_restarted_and_their_lost_requests_counted(load: Load) -> None:
    stack = load.stack
    before = {server: stack.container(server)["RestartCount"] for server in SERVERS}
    counted = failures(stack)
    killed_at = time.monotonic()
    for server in SERVERS:
        # The container ends with its server, and the exec with it (137) if it was still running.
        stack.run("exec", "-T", server, "python", "-c", KILL_SERVER, check=False)

    def restarted() -> tuple[bool, Any]:
        now = {server: stack.container(server) for server in SERVERS}
        seen = {s: (c["RestartCount"], c["State"].get("Health", {}).get("Status")) for s, c in now.items()}
        again = [s for s, (count, health) in seen.items() if count > before[s] and health == "healthy"]
        return len(again) == len(SERVERS), seen

    wait_for("every server restarted by Docker and healthy again", restarted, 60)
    for server in SERVERS:
        state = stack.container(server)["State"]
        TIMINGS[f"{server}: exit -> restarted"] = (
            moment(state["StartedAt"]) - moment(state["FinishedAt"])
        ).total_seconds()

    # A TCP user's connection dies with the server, whether a request was on it or not. An HTTP
    # server has only the requests in flight at that instant (about 2.5 at this load), maybe none:
    # its users count the outage as they reconnect.

    def lost_and_counted() -> tuple[bool, Any]:
        grown = grown_since(stack, counted)
        in_flight = {server for (server, kind) in grown if kind in IN_FLIGHT}
        lost = {server for (server, kind) in grown if kind in OUTAGE}
        return in_flight >= set(TCP_SERVERS) and lost == set(SERVERS), grown

    grown = wait_for("the requests lost counted, for every server", lost_and_counted, 60)
    print(f"\nfailures counted after the kills, by (server, kind): {grown}")
    assert {kind for (_, kind) in grown} <= OUTAGE, grown
    restarted_and_counted = answered(stack)  # reports lag 3 s: the outage's are in by now

    def recovered() -> tuple[bool, Any]:
        now = answered(stack)
        return all(now[s] > restarted_and_counted[s] for s in SERVERS), now

    wait_for("every server answering Locust again", recovered, 60)
    TIMINGS["kill -> every server answering"] = time.monotonic() - killed_at


def test_a_lost_worker_users_are_redistributed(load: Load) -> None:
    stack = load.stack
    workers = stack.ids("locust-worker")
    assert len(workers) == 2, workers
    last_new: dict[str, float] = {}
    longest: dict[str, float] = dict.fromkeys(SERVERS, 0.0)
    previous = answered(stack)

    def watch() -> None:
        """Note, per server, the longest stretch in which the master's stats showed no new answer."""
        nonlocal previous
        now, at = answered(stack), time.monotonic()
        for server in SERVERS:
            if now[server] > previous[server]:
                longest[server] = max(longest[server], at - last_new.get(server, killed_at))
                last_new[server] = at
        previous = now

    subprocess.run(["docker", "kill", workers[1]], check=True, capture_output=True)
    killed_at = time.monotonic()
    name = inspect(workers[1])["Name"]

    def redistributed() -> tuple[bool, Any]:
        watch()
        stats = stack.locust("/stats/requests")
        running = [w for w in stats["workers"] if w["state"] in ("running", "spawning")]
        seen = [(w["state"], w["user_count"]) for w in stats["workers"]]
        return len(running) == 1 and running[0]["user_count"] == USERS == stats["user_count"], seen

    seen = wait_for(f"{name}'s users moved to the other worker", redistributed, 45)
    TIMINGS["worker lost -> users redistributed"] = time.monotonic() - killed_at
    print(f"\nworkers after losing {name}: (state, users) {seen}")
    assert not inspect(workers[1])["State"]["Running"], "docker kill is a stop: not restarted"
    rebalanced = answered(stack)

    def every_server_served() -> tuple[bool, Any]:
        watch()
        now = answered(stack)
        return all(now[s] > rebalanced[s] for s in SERVERS), now

    wait_for("every server answering the surviving worker", every_server_served, 60)
    wait_for("the users counted once, all on the surviving worker", lambda: users_per_server(stack), 60)
    for server, gap in longest.items():
        TIMINGS[f"{server}: longest gap without new answers"] = gap


def test_stopped_servers_drain_and_exit_cleanly_under_load(load: Load) -> None:
    """`docker compose stop` sends SIGTERM: every server drains and exits 0 well within the grace period."""
    stack = load.stack
    counted = failures(stack)
    stack.timed("stop servers under load", "stop", "--timeout", "15", *SERVERS)
    for server in SERVERS:
        state = stack.container(server)["State"]
        assert state["ExitCode"] == 0, f"{server} exited with {state['ExitCode']}: Docker's SIGKILL?"
        log = stack.run("logs", "--no-color", "--since", state["StartedAt"], server)
        # Ours: "shutting down"; gunicorn's master: "Shutting down: Master".
        assert "shutting down" in log.lower(), log
        # A drain cut short says so (ours: "drain timeout"; gunicorn kills a worker it waited for).
        assert "drain timeout" not in log and "SIGKILL" not in log, log
        assert "Traceback" not in log, log

    # The users go on sending to the stopped servers: what they count once the workers are scraped.
    def scraped() -> tuple[bool, Any]:
        grown = grown_since(stack, counted)
        return bool(grown), grown

    grown = wait_for("the failures counted", scraped, 30)
    print(f"\nfailures counted as the servers stopped, by (server, kind): {grown}")
