"""``echolab bench``: the article's client, grown up.

An asyncio (uvloop) load client. Closed loop by default: each connection
sends its next request when the previous reply arrives, so throughput is
bounded by Little's law at ``connections / delay``. With ``--rate`` it runs an
open loop instead: requests leave at a constant arrival rate whatever the
server does, and latency is measured from each request's *intended* send time
(as wrk2 does), so an overloaded server cannot hide its queueing delay
(coordinated omission).

The per-request path is a few attribute lookups, one bytes comparison, one
``perf_counter`` and one ``list.append``: the client must stay cheaper than
the server it loads on the same two cores.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any

import httptools
import uvloop

from ..protocol import NEWLINE, expected_reply, is_error, request_bytes
from ..settings import BenchSettings
from .client import failure_kind

CONNECT_CONCURRENCY = 256  # connects in flight at once; more only overflows the SYN queue
CONNECT_PHASE_SECONDS = 30.0
RECONNECT_DELAY = 0.05
SAMPLE = b"the quick brown fox jumps over the lazy dog "


@dataclass
class BenchResult:
    target: str
    framing: str
    mode: str
    connections: int
    connected: int
    rate: float
    delay_hint_ms: float
    seconds: float
    requests: int
    throughput: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    bound: float | None = None
    bound_fraction: float | None = None


class Run:
    """State shared by every connection of one benchmark run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: str, args: BenchSettings) -> None:
        self.loop = loop
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.framing = args.framing
        message = (SAMPLE * (args.message_size // len(SAMPLE) + 1))[: args.message_size]
        self.payload = request_bytes(message, self.framing)
        self.expected = expected_reply(message, self.framing)
        self.timeout = args.timeout
        self.closed_loop = not args.rate
        self.measuring = False
        self.stopping = False
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.limit = args.requests or math.inf
        self.done = loop.create_future()

    def record(self, latency: float) -> None:
        if self.measuring:
            self.latencies.append(latency)

    def error(self, kind: str) -> None:
        if self.measuring:
            self.errors[kind] += 1


class LinesConnection(asyncio.Protocol):
    """A persistent connection; ``sent`` holds the send (or intended) times in flight."""

    def __init__(self, run: Run, user: User) -> None:
        self.run = run
        self.user = user
        self.transport: Any = None
        self.partial = b""
        self.sent: collections.deque[float] = collections.deque()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.user.connected(self)

    def send(self, at: float) -> None:
        self.sent.append(at)
        self.transport.write(self.run.payload)

    def data_received(self, data: bytes) -> None:
        run = self.run
        if data == run.expected and not self.partial:
            # The hot path of a closed loop: one whole, correct reply.
            now = perf_counter()
            sent = self.sent
            if run.measuring:
                run.latencies.append(now - sent.popleft())
            else:
                sent.popleft()
            if run.closed_loop and not run.stopping:
                sent.append(now)
                self.transport.write(run.payload)
            return
        self._replies(data)

    def _replies(self, data: bytes) -> None:
        """Any other read: several replies, a split one, or wrong ones."""
        data = self.partial + data
        *lines, self.partial = data.split(NEWLINE)
        if not lines:
            return
        now = perf_counter()
        run = self.run
        expected = run.expected
        for line in lines:
            line += NEWLINE
            at = self.sent.popleft()
            if line == expected:
                run.record(now - at)
            else:
                run.error("server_error" if is_error(line) else "wrong_reply")
        if run.closed_loop and not run.stopping and not self.sent:
            self.send(now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.user.lost(self, exc)


class OneshotConnection(asyncio.Protocol):
    """The article's protocol: one connection per request, the reply ends at EOF."""

    def __init__(self, run: Run, user: User) -> None:
        self.run = run
        self.user = user
        self.transport: Any = None
        self.chunks: list[bytes] = []
        self.sent: collections.deque[float] = collections.deque()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.user.conn = self
        self.sent.append(self.user.started)
        transport.write(self.run.payload)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or not self.chunks or not self.sent:
            self.user.lost(self, exc)
            return
        reply = b"".join(self.chunks)
        if reply == self.run.expected:
            self.run.record(perf_counter() - self.sent.popleft())
        else:
            self.run.error("server_error" if is_error(reply) else "wrong_reply")
        self.user.again()


class HttpConnection(LinesConnection):
    """HTTP/1.1 keep-alive: a POST per request, the response parsed by httptools."""

    def __init__(self, run: Run, user: User) -> None:
        super().__init__(run, user)
        self.parser = httptools.HttpResponseParser(self)
        self.body = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.error("bad_response")
            self.transport.abort()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        now = perf_counter()
        run = self.run
        at = self.sent.popleft()
        status = self.parser.get_status_code()
        if status == 200 and self.body == run.expected:
            run.record(now - at)
        else:
            run.error("wrong_reply" if status == 200 else f"http_{status}")
        self.body = b""
        if run.closed_loop and not run.stopping:
            self.send(now)


class User:
    """One simulated client: keeps a connection (or a request) going until the run stops."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.conn: LinesConnection | OneshotConnection | None = None
        self.started = 0.0
        self.ready = run.loop.create_future()

    async def connect(self) -> None:
        run = self.run
        factory = {"lines": LinesConnection, "oneshot": OneshotConnection, "http": HttpConnection}[
            run.framing
        ]
        self.started = perf_counter()
        try:
            await asyncio.wait_for(
                run.loop.create_connection(lambda: factory(run, self), run.host, run.port), run.timeout
            )
        except (OSError, TimeoutError) as exc:
            run.error(kind_of(exc))
            self.again(RECONNECT_DELAY)

    def connected(self, conn: LinesConnection) -> None:
        self.conn = conn
        if not self.ready.done():
            self.ready.set_result(None)
        if self.run.closed_loop:
            conn.send(perf_counter())

    def lost(self, conn: LinesConnection | OneshotConnection, exc: Exception | None) -> None:
        """The connection ended early: its requests in flight failed."""
        run = self.run
        if run.stopping:
            return
        for _ in conn.sent:
            run.error(kind_of(exc))
        conn.sent.clear()
        self.conn = None
        self.again(RECONNECT_DELAY)

    def again(self, after: float = 0.0) -> None:
        """Connect anew (oneshot: the next request; lines: after an error)."""
        run = self.run
        if run.stopping or (run.framing == "oneshot" and not run.closed_loop):
            return
        if after:
            run.loop.call_later(after, lambda: run.loop.create_task(self.connect()))
        else:
            run.loop.create_task(self.connect())


def kind_of(exc: BaseException | None) -> str:
    return failure_kind(exc) if exc is not None else "closed"


async def pace(run: Run, users: list[User], rate: float) -> None:
    """Open loop: send request i at t0 + i/rate, round-robin over the connections."""
    start = perf_counter()
    sent = 0
    count = len(users)
    while not run.stopping:
        due = int((perf_counter() - start) * rate)
        while sent < due:
            conn = users[sent % count].conn
            if isinstance(conn, LinesConnection):
                conn.send(start + sent / rate)
            else:
                run.error("not_connected")
            sent += 1
        await asyncio.sleep(0.001)


async def watch(run: Run, users: list[User]) -> None:
    """Abort connections whose oldest request is past the timeout; end a --requests run."""
    tick = min(0.1, run.timeout / 2)
    while not run.stopping:
        await asyncio.sleep(tick)
        if run.measuring and len(run.latencies) >= run.limit and not run.done.done():
            run.done.set_result(None)
        limit = perf_counter() - run.timeout
        for user in users:
            conn = user.conn
            if conn is not None and conn.sent and conn.sent[0] < limit:
                run.error("timeout")
                conn.sent.clear()
                conn.transport.abort()


async def bench(target: str, args: BenchSettings) -> BenchResult:
    if args.rate and args.framing == "oneshot":
        raise SystemExit("--rate (open loop) needs persistent connections: --framing lines or http")
    loop = asyncio.get_running_loop()
    run = Run(loop, target, args)
    users = [User(run) for _ in range(args.connections)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(user: User) -> None:
        async with gate:
            await user.connect()
            if run.framing != "oneshot":
                await asyncio.wait([user.ready], timeout=run.timeout)

    # A server that accepts slowly (thousands of threads) must not stall the
    # run: measure after CONNECT_PHASE_SECONDS with whoever got in; the rest
    # keep trying, and what they miss shows as fewer connections and errors.
    connecting = [loop.create_task(connect(u)) for u in users]
    await asyncio.wait(connecting, timeout=CONNECT_PHASE_SECONDS)
    connected = sum(u.ready.done() for u in users) if run.framing != "oneshot" else len(users)
    background = [loop.create_task(watch(run, users)), *connecting]
    if args.rate:
        background.append(loop.create_task(pace(run, users, args.rate)))
    await asyncio.sleep(0 if args.requests else args.warmup)

    gc.collect()
    gc.disable()  # a collection pause would land on some unlucky requests' latency
    run.measuring = True
    started = perf_counter()
    if args.requests:
        await run.done
    else:
        await asyncio.sleep(args.duration)
    run.measuring = False
    elapsed = perf_counter() - started
    gc.enable()

    run.stopping = True
    for task in background:
        task.cancel()
    for user in users:
        if user.conn is not None:
            user.conn.transport.close()
    return summarise(run, target, args, connected, elapsed)


def summarise(run: Run, target: str, args: BenchSettings, connected: int, elapsed: float) -> BenchResult:
    latencies = sorted(run.latencies)
    count = len(latencies)

    def pct(p: float) -> float:
        return round(latencies[min(count - 1, int(p / 100 * count))] * 1000, 3) if count else math.nan

    throughput = count / elapsed if elapsed else 0.0
    delay = args.delay_hint_ms / 1000.0
    bound = args.connections / delay if delay > 0 and not args.rate else None
    return BenchResult(
        target=target,
        framing=args.framing,
        mode="open" if args.rate else "closed",
        connections=args.connections,
        connected=connected,
        rate=args.rate,
        delay_hint_ms=args.delay_hint_ms,
        seconds=round(elapsed, 3),
        requests=count,
        throughput=round(throughput, 1),
        latency_ms={
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": round(latencies[-1] * 1000, 3) if count else math.nan,
        },
        errors=dict(run.errors),
        bound=round(bound, 1) if bound else None,
        bound_fraction=round(throughput / bound, 4) if bound else None,
    )


def render(result: BenchResult) -> str:
    lat = result.latency_ms
    lines = [
        f"target      {result.target} ({result.framing}, {result.mode} loop, "
        f"{result.connected}/{result.connections} connections)",
        f"requests    {result.requests} in {result.seconds:.2f}s = {result.throughput:,.0f} req/s",
        f"latency ms  p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f}",
        "errors      " + (", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "none"),
    ]
    if result.bound:
        lines.append(
            f"little's law bound {result.bound:,.0f} req/s "
            f"({result.connections} connections / {result.delay_hint_ms:g} ms): "
            f"achieved {result.bound_fraction:.1%}"
        )
    return "\n".join(lines)


def main(target: str, args: BenchSettings, as_json: bool = False) -> int:
    result = uvloop.run(bench(target, args))
    if as_json:
        json.dump(asdict(result), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(render(result))
    return 0
