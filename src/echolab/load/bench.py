"""``echolab bench``: the article's client, grown up.

An asyncio (uvloop) load client, with at most one request outstanding on
each connection, in both of its modes:

* closed loop (the default): each connection sends its next request when the
  previous reply arrives, so throughput is bounded by Little's law at
  ``connections / delay``;
* open loop (``--rate``), as wrk2 runs it: requests fall due at a constant
  rate whatever the server does, each goes out on the first free connection
  (or waits in the client for one), and its latency is measured from the
  time it was *due*, so an overloaded server cannot hide its queueing delay
  (coordinated omission).

The per-request path is a few attribute lookups, one bytes comparison, one
``perf_counter`` and one ``list.append``: the client must stay cheaper than
the server it loads on the same two cores.

It refuses to mislead: nothing connecting fails at once, a framing mismatch
is named, connections that did not open are explained (this client's own
file-descriptor limit included), no figure is NaN, and Ctrl-C or SIGTERM
reports what was measured so far, marked partial.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import gc
import json
import math
import resource
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import asdict
from time import monotonic, perf_counter, process_time
from typing import Any

import httptools
import uvloop

from .. import machine
from ..protocol import NEWLINE, expected_reply, is_error, request_bytes, sample_message
from ..settings import BenchSettings
from .bench_result import (
    FD_ADVICE,
    BenchResult,
    Evidence,
    diagnose,
    explain_connections,
    histogram,
    percentiles,
    render,
)
from .client import UNREACHABLE, failure_kind

CONNECT_CONCURRENCY = 256  # connects in flight at once; more only overflows the SYN queue
CONNECT_PHASE_SECONDS = 30.0
PROBE_TIMEOUT = 5.0  # the one connection that tells "nothing listens" before any load
RECONNECT_DELAY = 0.05
PACE_TICK = 0.001
PROGRESS_AFTER = 3.0  # seconds: shorter runs need no progress line
FD_SPARE = 32  # descriptors the client needs besides its connections
CLIENT_BUSY_PERCENT = 90.0  # a client near one core measures itself as much as the server


class CannotConnect(Exception):
    """Not one connection to the target: the message says why, in one line."""


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) to (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} needs a port: HOST:PORT, e.g. 127.0.0.1:9091")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host.removeprefix("[").removesuffix("]"), int(port)


class Run:
    """State shared by every connection of one benchmark run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, args: BenchSettings) -> None:
        self.loop = loop
        self.host, self.port = host, port
        self.target = f"{host}:{port}"
        self.framing = args.framing
        message = sample_message(args.message_size)
        self.payload = request_bytes(message, self.framing)
        # A reply to compare with; None (--path): any 200 answer is right.
        self.expected: bytes | None = expected_reply(message, self.framing)
        if args.path:
            self.payload = f"GET {args.path} HTTP/1.1\r\nHost: echolab\r\n\r\n".encode()
            self.expected = None
        self.timeout = args.timeout
        self.open_loop = bool(args.rate)
        self.measuring = False
        self.stopping = False
        self.phase = "connecting"
        self.opened = 0  # callers whose first connection opened
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.connect_errors: collections.Counter[str] = collections.Counter()
        self.evidence = Evidence(args.framing)
        # Open loop: free connections, and due requests waiting for one (their due times).
        self.idle: collections.deque[LinesConnection] = collections.deque()
        self.backlog: collections.deque[float] = collections.deque()
        self.limit = args.requests or math.inf
        self.done: asyncio.Future[None] = loop.create_future()
        self.interrupted: asyncio.Future[int] = loop.create_future()
        self.tasks: set[asyncio.Task[None]] = set()
        self.cpu_percent = 0.0  # this process's CPU while measuring, % of one core
        self.window = (0.0, 0.0)  # the measurement's start and end, time.monotonic()

    def record(self, latency: float) -> None:
        if self.measuring:
            self.latencies.append(latency)

    def error(self, kind: str) -> None:
        if self.measuring:
            self.errors[kind] += 1

    def wrong(self, reply: bytes) -> None:
        if not self.evidence.first_wrong:
            self.evidence.first_wrong = reply[:64]
        self.error("server_error" if is_error(reply) else "wrong_reply")

    def free(self, conn: LinesConnection, now: float) -> None:
        """``conn`` has nothing outstanding: closed loop, send again; open loop, the oldest due request."""
        if self.stopping:
            return
        if not self.open_loop:
            conn.send(now)
        elif self.backlog:
            conn.send(self.backlog.popleft())
        else:
            self.idle.append(conn)

    def due(self, at: float) -> None:
        """Open loop: a request falls due at ``at``; it leaves on a free connection or waits for one."""
        idle = self.idle
        while idle:
            conn = idle.popleft()
            if conn.alive:
                conn.send(at)
                return
        self.backlog.append(at)

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task the run's end cancels and waits for: no connect may outlive the loop."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        """Stop sending; cancel every pending connect and retry, and wait until they are gone."""
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def interrupt(self, signum: int) -> None:
        if not self.interrupted.done():
            self.interrupted.set_result(signum)

    async def wait(self, seconds: float | None = None, until: asyncio.Future[Any] | None = None) -> bool:
        """Wait ``seconds``, or until ``until`` is done; False if interrupted first."""
        waiters: list[asyncio.Future[Any]] = [self.interrupted, *([until] if until is not None else [])]
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        return not self.interrupted.done()


class LinesConnection(asyncio.Protocol):
    """A persistent connection with at most one request outstanding; ``sent`` holds its send (or due) time."""

    def __init__(self, run: Run, caller: Caller) -> None:
        self.run = run
        self.caller = caller
        self.transport: Any = None
        self.partial = b""
        self.sent: collections.deque[float] = collections.deque()
        self.alive = False
        self.aborted = False
        self.replies = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.alive = True
        self.caller.opened(self)
        self.run.free(self, perf_counter())

    def send(self, at: float) -> None:
        self.sent.append(at)
        self.transport.write(self.run.payload)

    def data_received(self, data: bytes) -> None:
        run = self.run
        if data == run.expected and self.sent and not self.partial:
            # The hot path: one whole, correct reply.
            now = perf_counter()
            at = self.sent.popleft()
            if run.measuring:
                run.latencies.append(now - at)
            self.replies += 1
            run.free(self, now)
            return
        self._replies(data)

    def _replies(self, data: bytes) -> None:
        """Any other read: a split reply, a wrong one, or one nobody asked for."""
        data = self.partial + data
        *lines, self.partial = data.split(NEWLINE)
        if not lines:
            return
        now = perf_counter()
        run = self.run
        for line in lines:
            line += NEWLINE
            if not self.sent:
                run.wrong(line)
                continue
            at = self.sent.popleft()
            if line == run.expected:
                self.replies += 1
                run.record(now - at)
            else:
                run.wrong(line)
        if not self.sent:
            run.free(self, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        run = self.run
        if not run.stopping and not self.aborted:
            run.evidence.server_closes += 1
            run.evidence.closed_after_one += self.replies == 1
        self.caller.lost(self, exc)


class OneshotConnection(asyncio.Protocol):
    """The article's protocol: one connection per request, the reply ends at EOF."""

    def __init__(self, run: Run, caller: Caller) -> None:
        self.run = run
        self.caller = caller
        self.transport: Any = None
        self.chunks: list[bytes] = []
        self.sent: collections.deque[float] = collections.deque()
        self.alive = False
        self.aborted = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.alive = True
        self.caller.opened(self)
        self.sent.append(self.caller.started)
        transport.write(self.run.payload)

    def data_received(self, data: bytes) -> None:
        self.run.evidence.bytes_received += len(data)
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if exc is not None or not self.chunks or not self.sent:
            self.caller.lost(self, exc)
            return
        reply = b"".join(self.chunks)
        if reply == self.run.expected:
            self.run.record(perf_counter() - self.sent.popleft())
        else:
            self.run.wrong(reply)
        self.caller.again()


class HttpConnection(LinesConnection):
    """HTTP/1.1 keep-alive: a POST per request, the response parsed by httptools."""

    def __init__(self, run: Run, caller: Caller) -> None:
        super().__init__(run, caller)
        self.parser = httptools.HttpResponseParser(self)
        self.body = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.error("bad_response")
            if not self.run.evidence.first_wrong:
                self.run.evidence.first_wrong = data[:64]
            self.aborted = True
            self.transport.abort()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        now = perf_counter()
        run = self.run
        status = self.parser.get_status_code()
        body, self.body = self.body, b""
        if not self.sent:
            run.error(f"http_{status}")
            return
        at = self.sent.popleft()
        if status == 200 and (run.expected is None or body == run.expected):
            self.replies += 1
            run.record(now - at)
        else:
            run.error("wrong_reply" if status == 200 else f"http_{status}")
        run.free(self, now)


FACTORIES: dict[str, type[LinesConnection] | type[OneshotConnection]] = {
    "lines": LinesConnection,
    "oneshot": OneshotConnection,
    "http": HttpConnection,
}


def connect_failure(exc: BaseException) -> str:
    """What a failed connect means; this client's own descriptor limit is not the server's fault."""
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return "client_fd_limit"
    return failure_kind(exc)


class Caller:
    """One simulated client: keeps a connection (or a request) going until the run stops.

    (Not a "user": that is Locust's word, for its own class, which load/locust_*.py subclass.)
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.conn: LinesConnection | OneshotConnection | None = None
        self.started = 0.0
        self.ready: asyncio.Future[None] = run.loop.create_future()

    async def connect(self, after: float = 0.0) -> None:
        run = self.run
        if after:
            await asyncio.sleep(after)
        factory = FACTORIES[run.framing]
        self.started = perf_counter()
        try:
            await asyncio.wait_for(
                run.loop.create_connection(lambda: factory(run, self), run.host, run.port), run.timeout
            )
        except (OSError, TimeoutError) as exc:
            kind = connect_failure(exc)
            run.connect_errors[kind] += 1
            run.error(kind)
            self.again(RECONNECT_DELAY)

    def opened(self, conn: LinesConnection | OneshotConnection) -> None:
        self.conn = conn
        if not self.ready.done():
            self.ready.set_result(None)
            self.run.opened += 1

    def lost(self, conn: LinesConnection | OneshotConnection, exc: Exception | None) -> None:
        """The connection ended early: its request in flight failed."""
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
        if run.stopping:
            return
        run.start(self.connect(after))


def kind_of(exc: BaseException | None) -> str:
    return failure_kind(exc) if exc is not None else "closed"


async def pace(run: Run, rate: float) -> None:
    """Open loop: request i falls due at t0 + i/rate."""
    start = perf_counter()
    issued = 0
    while not run.stopping:
        due = int((perf_counter() - start) * rate) + 1
        while issued < due:
            run.due(start + issued / rate)
            issued += 1
        await asyncio.sleep(PACE_TICK)


async def watch(run: Run, callers: list[Caller]) -> None:
    """Abort connections whose request is past the timeout; end a --requests run."""
    tick = min(0.1, run.timeout / 2)
    while not run.stopping:
        await asyncio.sleep(tick)
        if run.measuring and len(run.latencies) >= run.limit and not run.done.done():
            run.done.set_result(None)
        limit = perf_counter() - run.timeout
        for caller in callers:
            conn = caller.conn
            if conn is not None and conn.sent and conn.sent[0] < limit and conn.alive:
                run.error("timeout")
                conn.sent.clear()
                conn.alive = False
                conn.aborted = True
                conn.transport.abort()


async def progress(run: Run, connections: int, planned: float) -> None:
    """A status line on a terminal's stderr, for runs longer than a few seconds."""
    if not sys.stderr.isatty():
        return
    began = perf_counter()
    shown = False
    try:
        while True:
            await asyncio.sleep(0.5)
            elapsed = perf_counter() - began
            if elapsed < PROGRESS_AFTER:
                continue
            line = f"{run.phase}: {run.opened:,}/{connections:,} connections open"
            if run.measuring:
                line += f", {len(run.latencies):,} requests measured"
            if planned:
                line += f" ({elapsed:.0f}/{planned:.0f} s)"
            sys.stderr.write(f"\r{line:<78}")
            sys.stderr.flush()
            shown = True
    finally:
        if shown:
            sys.stderr.write("\r" + " " * 78 + "\r")
            sys.stderr.flush()


async def probe(host: str, port: int, timeout: float) -> None:
    """One connection before the load: CannotConnect, in words, if nothing is there."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except socket.gaierror as exc:
        raise CannotConnect(f"cannot resolve {host!r}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise CannotConnect("connection refused: is a server listening there?") from None
    except TimeoutError:
        raise CannotConnect(
            f"timeout: no answer within {timeout:g} s (a host that is down, or a firewall)"
        ) from None
    except OSError as exc:
        if exc.errno in UNREACHABLE:
            raise CannotConnect(f"unreachable: {exc.strerror}") from None
        raise CannotConnect(exc.strerror or str(exc)) from None
    writer.close()


async def bench(host: str, port: int, args: BenchSettings) -> BenchResult:
    loop = asyncio.get_running_loop()
    run = Run(loop, host, port, args)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, run.interrupt, signum)
    probing = loop.create_task(probe(host, port, min(args.timeout, PROBE_TIMEOUT)))
    if not await run.wait(until=probing):
        probing.cancel()
        return summarise(run, args, 0, 0.0)
    probing.result()  # CannotConnect: nothing listens

    callers = [Caller(run) for _ in range(args.connections)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(caller: Caller) -> None:
        async with gate:
            await caller.connect()
            await asyncio.wait([caller.ready], timeout=run.timeout)

    planned = 0.0 if args.requests else args.warmup + args.duration
    run.start(watch(run, callers))
    run.start(progress(run, len(callers), planned))
    # A server that accepts slowly (thousands of threads) must not stall the
    # run: measure after CONNECT_PHASE_SECONDS with whoever got in; the rest
    # keep trying, and what they miss shows as fewer connections and errors.
    connecting = [loop.create_task(connect(u)) for u in callers]
    run.tasks.update(connecting)
    all_tried = asyncio.gather(*connecting)
    elapsed = 0.0
    connected = 0
    if await run.wait(CONNECT_PHASE_SECONDS, until=all_tried):
        connected = run.opened
        still_connecting = sum(not task.done() for task in connecting)
        # Collected before the load, not at the measurement's start: a collection
        # pause would land on some unlucky requests' latency, and an open loop
        # would send the requests due meanwhile in a burst inside the measurement.
        gc.collect()
        gc.disable()
        if args.rate:
            run.start(pace(run, args.rate))
        run.phase = "warming up"
        if await run.wait(0 if args.requests else args.warmup):
            run.phase = "measuring"
            run.measuring = True
            started, cpu, began = perf_counter(), process_time(), monotonic()
            await run.wait(
                None if args.requests else args.duration, until=run.done if args.requests else None
            )
            run.measuring = False
            elapsed = perf_counter() - started
            run.window = (began, monotonic())
            run.cpu_percent = 100 * (process_time() - cpu) / elapsed if elapsed else 0.0
        gc.enable()
    else:
        connected, still_connecting = run.opened, 0

    all_tried.cancel()
    await run.stop()
    for caller in callers:
        if caller.conn is not None and caller.conn.transport is not None:
            caller.conn.transport.close()
    result = summarise(run, args, connected, elapsed)
    if not result.partial:
        result.notes[:0] = [note for note in (explain_connections(result, still_connecting),) if note]
        result.problem = diagnose(result, run.evidence)
        if result.problem:  # the figures are not the server's: no share of the bound to show
            result.bound_fraction = None
    return result


def summarise(run: Run, args: BenchSettings, connected: int, elapsed: float) -> BenchResult:
    latencies = sorted(run.latencies)
    throughput = len(latencies) / elapsed if elapsed else 0.0
    delay = args.delay_hint_ms / 1000.0
    if args.rate:
        bound: float | None = args.rate
    else:
        bound = args.connections / delay if delay > 0 else None
    notes = []
    if run.cpu_percent >= CLIENT_BUSY_PERCENT:
        notes.append(
            f"this client used {run.cpu_percent:.0f}% of a core while measuring: the figures may show "
            "its limit rather than the server's (lower the load, or give the client a core of its own)"
        )
    if args.rate and delay > 0 and args.connections / delay < args.rate:
        notes.append(
            f"{args.connections:,} connections at {args.delay_hint_ms:g} ms a request carry at most "
            f"{args.connections / delay:,.0f} req/s, less than the {args.rate:,.0f} req/s offered: the rest "
            f"queues in this client (--connections {math.ceil(args.rate * delay * 1.2):,} would carry it)"
        )
    return BenchResult(
        target=run.target,
        framing=args.framing,
        mode="open" if args.rate else "closed",
        connections=args.connections,
        connected=connected,
        rate=args.rate,
        delay_hint_ms=args.delay_hint_ms,
        seconds=round(elapsed, 3),
        requests=len(latencies),
        throughput=round(throughput, 1),
        latency_ms=percentiles(latencies),
        histogram_ms=histogram([x * 1000 for x in latencies]),
        errors=dict(run.errors),
        connect_errors=dict(run.connect_errors),
        bound=round(bound, 1) if bound else None,
        bound_fraction=round(throughput / bound, 4) if bound else None,
        unsent=len(run.backlog),
        client_cpu_percent=round(run.cpu_percent, 1),
        measured_from=run.window[0],
        measured_until=run.window[1],
        notes=notes,
        partial=run.interrupted.done(),
        interrupted=signal.Signals(run.interrupted.result()).name if run.interrupted.done() else None,
    )


def fd_note(connections: int) -> str | None:
    """A warning when this process may not open ``connections`` sockets."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < connections + FD_SPARE:
        return (
            f"this client may open only about {soft - FD_SPARE:,} connections "
            f"(ulimit -n is {soft:,}): {FD_ADVICE}"
        )
    return None


def main(target: str, args: BenchSettings, as_json: bool = False) -> int:
    """Run, print (text or JSON on stdout; problems on stderr), and the exit status."""
    try:
        host, port = parse_target(target)
    except ValueError as exc:
        print(f"echolab bench: error: {exc}", file=sys.stderr)
        return 2
    problem = None
    if args.rate and args.framing == "oneshot":
        problem = "--rate (open loop) needs persistent connections: --framing lines or http"
    if args.path and args.framing != "http":
        problem = "--path is an HTTP request's: --framing http"
    if problem:
        print(f"echolab bench: error: {problem}", file=sys.stderr)
        return 2
    facts = machine.facts()  # before the load: the load average is the machine's, not ours
    try:
        result = uvloop.run(bench(host, port, args))
    except CannotConnect as exc:
        print(f"echolab bench: cannot connect to {target}: {exc}", file=sys.stderr)
        return 1
    result.machine = facts
    result.notes += [note for note in (fd_note(args.connections),) if note]
    if as_json:
        json.dump(asdict(result), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
        for note in result.notes:
            print(f"echolab bench: note: {note}", file=sys.stderr)
    else:
        print(render(result))
    if result.problem:
        print(f"echolab bench: {result.problem}", file=sys.stderr)
    if result.interrupted:
        return 128 + signal.Signals[result.interrupted]
    return 1 if result.problem else 0
