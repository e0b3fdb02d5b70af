"""Open-loop load for the Locust users (``--target-rps``), and a run's state as metrics.

**Closed loop**, the default: each user sends, waits for the reply, thinks
(``--think-time``), sends again. The load follows the server: a slow server
is sent less, and latency counts only requests that were sent, so queueing
hides (Little's law: rate = users / (latency + think time)). Locust's own
``constant_throughput`` is still a closed loop: it shortens the wait, never
sends while a reply is outstanding, and drops what it cannot send.

**Open loop**, ``--target-rps N``: N requests per second in all, whatever the
replies do. Each user sends at N / users (all user classes alike, so each
server gets its users' share), on a fixed schedule with a random phase (so
that users spawned together do not send together), each request in a
greenlet of its own: an unanswered request never holds back the next, and
its latency runs from the time it was due, so waiting shows. A user keeps
at most ``--max-inflight`` requests unanswered (each TCP request in flight
holds a connection); an arrival beyond that is not sent and counts as a
failure of kind ``not_sent``, which is the server falling behind.

Workers never learn the total number of users (Locust does not send
``num_users`` to them), so the master, or the single local process, divides:
it wraps ``runner.start``, which every start takes (headless, the web UI, a
shape's tick, a rebalance), and stores the per-user rate in the options,
which ride to the workers with every spawn message.

Every process also exports ``echo_client_running`` (1 while a run is
spawning or running: the dashboards' run annotations) and
``echo_client_offered_rate`` (its users' share of ``--target-rps`` per server).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.pool import Pool
from locust import User
from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING, Runner, WorkerRunner
from prometheus_client import REGISTRY, Metric
from prometheus_client.registry import Collector

from ..metrics import spec
from .locust_metrics import client_metrics, user_counter

RATE_KEY = "echo_rate_per_user"  # not one of Locust's own options: the master sends it to its workers
NOT_SENT = "not_sent"


class NotSent(Exception):
    """An arrival the user could not send: its ``--max-inflight`` requests were all unanswered."""


def rate_per_user(options: Any) -> float:
    """Requests/s each user sends; 0 in a closed loop."""
    if options is None or getattr(options, "target_rps", 0.0) <= 0:
        return 0.0
    return float(getattr(options, RATE_KEY, 0.0))


def divide_at_each_start(runner: Runner) -> None:
    """Make every start set the per-user rate for the number of users it starts (master or local runner)."""
    options = runner.environment.parsed_options
    start = runner.start

    def start_dividing(user_count: int, spawn_rate: float, *args: Any, **kwargs: Any) -> Any:
        if options is not None and options.target_rps > 0:
            setattr(options, RATE_KEY, options.target_rps / max(user_count, 1))
        return start(user_count, spawn_rate, *args, **kwargs)

    runner.start = start_dividing  # type: ignore[method-assign]


class RunCollector(Collector):
    """Whether this process runs a test, and what it offers per server."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.users = user_counter(environment)

    def collect(self) -> Iterator[Metric]:
        runner = self.environment.runner
        running = runner is not None and runner.state in (STATE_SPAWNING, STATE_RUNNING)
        yield spec("echo_client_running").family({"": int(running)})
        rate = rate_per_user(self.environment.parsed_options)
        yield spec("echo_client_offered_rate").family(
            {server: users * rate for server, users in self.users().items()}
        )


def on_init(environment: Environment, runner: Runner, **_: Any) -> None:
    REGISTRY.register(RunCollector(environment))
    if not isinstance(runner, WorkerRunner):
        divide_at_each_start(runner)


def setup(hooks: Any) -> None:
    hooks.init.add_listener(on_init)


class Arrivals:
    """One user's open-loop schedule: the task sends what is due, the wait lasts until the next arrival.

    ``send(scheduled)`` runs each request in its own greenlet, timed from
    ``scheduled`` (a ``time.perf_counter()`` value).
    """

    def __init__(self, user: User, send: Callable[[float], None], request_type: str, framing: str) -> None:
        options = user.environment.parsed_options
        self.options = options
        self.send = send
        self.pool = Pool(options.max_inflight)
        self.due = 0.0
        self.server: str = user.server  # type: ignore[attr-defined]  # every echolab user has one
        self.request_type, self.framing = request_type, framing
        self.fire = user.environment.events.request.fire

    @staticmethod
    def of(user: User, send: Callable[[float], None], request_type: str, framing: str) -> Arrivals | None:
        """The user's schedule in an open-loop run; None in a closed loop."""
        return (
            Arrivals(user, send, request_type, framing)
            if rate_per_user(user.environment.parsed_options)
            else None
        )

    def period(self) -> float:
        """Read at every arrival: a change in the number of users changes every user's rate at once."""
        return 1.0 / max(rate_per_user(self.options), 1e-9)

    def start(self) -> None:
        """From on_start: a random phase within one period."""
        gevent.sleep(random.uniform(0.0, self.period()))
        self.due = time.perf_counter()

    def arrive(self) -> None:
        """The user's task: send the arrival that is due (or count it not sent), schedule the next."""
        scheduled = self.due
        self.due = scheduled + self.period()  # a fixed schedule: a late arrival does not delay the next
        if self.pool.full():
            self.not_sent()
        else:
            self.pool.spawn(self.send, scheduled)

    def wait(self) -> float:
        """The user's wait_time: until the next arrival (none if it is already due)."""
        return max(0.0, self.due - time.perf_counter())

    def not_sent(self) -> None:
        tally = client_metrics().tallies[self.server]
        tally.requests[self.framing] += 1  # a request the run should have made, not a latency
        tally.failures[NOT_SENT] += 1
        limit = self.options.max_inflight
        self.fire(
            request_type=self.request_type,
            name=self.server,
            response_time=None,
            response_length=0,
            exception=NotSent(f"{limit} requests unanswered (--max-inflight): not sent"),
        )

    def stop(self) -> None:
        self.pool.kill()
