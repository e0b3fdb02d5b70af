"""Every server recreated at once under load, twice: each server keeps exactly its own users.

Runs after check_scenarios.py and before check_chaos.py, on the same stack
(tests/stack/conftest.py). Recreated together, the servers used to take each
other's addresses, and Docker's DNS, stale for a moment, sent Locust's users
to another class's server: the async server held 60 connections and the
threaded one 40 where each should have held 50, and TCP users that landed on
an HTTP server got its "400 Bad Request" (issue 24). Each server now has an
address of its own on the stack's network (src/echolab/deploy/stack.py).

Under a closed loop (one persistent connection per TCP user) it recreates
the four servers with `docker compose up --force-recreate`, the way
`make up` does after a change, then again, and asserts on what the servers
and Locust then count: each TCP server holds exactly its class's users'
connections; every server answers as many requests as its class's users
send; and no user got a reply in another protocol.
"""

from __future__ import annotations

import time
from typing import Any

from support.stack import (
    CLOSED_LOOP,
    OPEN_LOOP,
    SERVERS,
    TIMINGS,
    USERS,
    Compose,
    Load,
    answered_and_sent,
    by,
    by_labels,
    settled,
    stop_swarm,
    swarm,
    wait_for,
)  # fmt: skip

from echolab import catalogue

TCP = [s.name for s in catalogue.SERVERS if s.transport == "tcp"]
PER_CLASS = USERS / len(SERVERS)  # Locust splits the users evenly between the four classes
WINDOW = "30s"
# What a user meets on another protocol's server: a TCP user reads an HTTP server's "400 Bad
# Request" as a wrong reply, an HTTP user cannot parse a TCP server's echo ("other").
WRONG_PROTOCOL = ("wrong_reply", "other")


def connections(stack: Compose) -> dict[str, float]:
    expr = f'sum by (server) (echo_connections_active{{server=~"{"|".join(TCP)}"}})'
    return by(stack.query(expr), "server")


def wrong_protocol(stack: Compose) -> dict[tuple[str, ...], float]:
    """Failures of the kinds a wrong protocol gives, by (server, kind), as last scraped."""
    expr = f'sum by (server, kind) (echo_client_failures_total{{kind=~"{"|".join(WRONG_PROTOCOL)}"}})'
    return by_labels(stack.query(expr), "server", "kind")


def recreate_all(stack: Compose, round_: int) -> None:
    started = time.monotonic()
    stack.run("up", "--detach", "--no-deps", "--force-recreate", "--wait", *SERVERS)
    TIMINGS[f"recreate all four servers ({round_})"] = time.monotonic() - started


def test_recreated_together_each_server_keeps_its_own_users(load: Load) -> None:
    stack = load.stack
    stop_swarm(stack)
    swarm(stack, CLOSED_LOOP)
    own = dict.fromkeys(TCP, PER_CLASS)

    def own_connections() -> tuple[bool, Any]:
        seen = connections(stack)
        return seen == own, seen

    wait_for("each TCP server holding its class's users' connections", own_connections, 60)
    wrong_before = wrong_protocol(stack)
    addresses = {s: stack.container(s)["NetworkSettings"]["Networks"] for s in SERVERS}
    recreate_all(stack, 1)
    recreate_all(stack, 2)
    recreated_at = time.monotonic()
    assert {s: stack.container(s)["NetworkSettings"]["Networks"].keys() for s in SERVERS} == {
        s: networks.keys() for s, networks in addresses.items()
    }
    moved = {
        s: (old["IPAddress"], stack.container(s)["NetworkSettings"]["Networks"][net]["IPAddress"])
        for s, networks in addresses.items()
        for net, old in networks.items()
    }
    assert all(old == new for old, new in moved.values()), f"each server's address back: {moved}"

    # Within the reconnect window: a user's next request after its connection broke reconnects.
    wait_for("each TCP server holding exactly its class's users again", own_connections, 60)
    TIMINGS["recreated -> every TCP user back on its own server"] = time.monotonic() - recreated_at
    wait_for(f"{WINDOW} of requests to the recreated servers", lambda: settled(stack, WINDOW), 120)
    answered, sent = answered_and_sent(stack, WINDOW)
    # One user of 5 on another class's server would be 20% more on one server and 20% less on
    # the other; a closed loop's counts on the two sides differ only by the scrapes' timing.
    assert all(abs(answered[s] / sent[s] - 1) < 0.1 for s in SERVERS), f"answered {answered}, sent {sent}"
    assert connections(stack) == own
    assert wrong_protocol(stack) == wrong_before, "a user got a reply in another server's protocol"
    print(f"\nafter two recreations: connections {connections(stack)}, answered {answered}, sent {sent}")
    stop_swarm(stack)
    swarm(stack, OPEN_LOOP)
