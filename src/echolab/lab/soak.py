"""``echolab soak`` (``make soak``): every server under a steady load for minutes: does anything grow?

A leak hides from short runs: a descriptor, a thread or a few objects per
connection or per request only show after many. Every server of the
catalogue runs natively, each under its own ``echolab bench`` client at a
fixed rate (open loop) for the whole run, all at once. The servers' resident
memory, open descriptors and threads (summed over a gunicorn master and its
workers) are sampled after the warm-up, every ``--interval`` seconds, at the
end of the load, and once the clients have gone. Growth from the first
loaded sample to the last beyond the noise allowed below is a leak, and the
exit status is 1, unless it stopped in the run's second half: a pool that
fills to the size its settings give (gthread's threads, an offload
executor) grows early and then holds, which the verdict says. A server that
cannot start, exits during the run or does not stop is killed with all it
started and told in one line; the others run on, and the exit status is 1.

Run it on a quiet machine; writes reports/soak-<time>.json.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from .. import machine
from ..launcher import HOST, LaunchError, Process
from ..load.bench_result import UNMEASURED
from ..settings import SoakSettings
from .contenders import SERVERS_AS_THEY_ARE, Contender, running
from .sweep import client_failed, exited, tree

# Growth from the first loaded sample to the last that is still noise: the
# allocator's arenas settle, a gunicorn worker's heap grows a little, a
# client reconnects. Beyond both the ratio and the amount, it is a leak.
RSS_NOISE = (1.2, 16.0)  # (ratio, MiB)
COUNT_NOISE = 8  # descriptors or threads


@dataclass(frozen=True)
class Footprint:
    """What a server holds at one moment, summed over its processes."""

    seconds: float
    rss_mib: float
    fds: int
    threads: int


def footprint(process: psutil.Process, started: float) -> Footprint:
    rss, fds, threads = 0.0, 0, 0
    for proc in tree(process):
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss / 2**20
            fds += proc.num_fds()
            threads += proc.num_threads()
    return Footprint(round(time.monotonic() - started, 1), round(rss, 1), fds, threads)


@dataclass
class Soaked:
    """One server's run: its samples (the first after the warm-up), and its client's result."""

    server: str
    samples: list[Footprint] = field(default_factory=list)
    after: Footprint | None = None  # once the load has gone
    client: dict[str, Any] = field(default_factory=dict)

    failure: str | None = None  # why it was not measured to the end, in one line

    def growth(self) -> list[str]:
        """What grew beyond the noise from the first loaded sample to the last, and is still growing."""
        return [text for text, settled in self.judged() if not settled]

    def judged(self) -> list[tuple[str, bool]]:
        """Each figure that grew beyond the noise from the first loaded sample to the last, and
        whether it had settled: no growth beyond the noise from the middle sample on."""
        if len(self.samples) < 2:
            return []
        first, middle, last = self.samples[0], self.samples[len(self.samples) // 2], self.samples[-1]
        told = []
        for what, unit in (("rss_mib", " MiB"), ("fds", ""), ("threads", "")):
            before, now = getattr(first, what), getattr(last, what)
            if grew(what, before, now):
                name = "memory" if what == "rss_mib" else what
                text = f"{name} {before:.0f} -> {now:.0f}{unit}"
                settled = not grew(what, getattr(middle, what), now)
                if settled:
                    text += f", none since {middle.seconds:.0f} s: a pool filled to its size, not a leak"
                told.append((text, settled))
        return told


def grew(what: str, before: float, now: float) -> bool:
    """Whether ``what`` grew beyond the noise from ``before`` to ``now``."""
    if what == "rss_mib":
        ratio, mib = RSS_NOISE
        return now > before * ratio and now - before > mib
    return now - before > COUNT_NOISE


def line(server: str, sample: Footprint) -> str:
    return f"{server} {sample.rss_mib:.0f} MiB {sample.fds} fds {sample.threads} threads"


def client(contender: Contender, port: int, args: SoakSettings, seconds: float) -> subprocess.Popen[str]:
    """``echolab bench --json`` at ``--rate`` for ``seconds``, in the background."""
    argv = [
        sys.executable, "-m", "echolab", "bench", f"{HOST}:{port}", "--json", "--framing", contender.framing,
        "--connections", str(args.connections), "--rate", f"{args.rate:g}", "--duration", f"{seconds:g}",
        "--warmup", "0", "--delay-hint-ms", f"{args.delay_ms:g}",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def servers(delay_ms: float, results: dict[str, Soaked]) -> Iterator[list[tuple[Contender, int, Process]]]:
    """Every server that starts; one that cannot, or does not stop, has it told in its result."""
    with contextlib.ExitStack() as stack:
        started = []
        for contender in SERVERS_AS_THEY_ARE:

            def stop_failed(why: str, result: Soaked = results[contender.name]) -> None:
                result.failure = why

            try:
                started.append(
                    (contender, *stack.enter_context(running(contender, delay_ms, on_stop_error=stop_failed)))
                )
            except LaunchError as exc:
                results[contender.name].failure = exc.summary
        yield started


def soak(args: SoakSettings) -> list[Soaked]:
    results = {v.name: Soaked(v.name) for v in SERVERS_AS_THEY_ARE}
    with servers(args.delay_ms, results) as started:
        watched = [(results[v.name], process, psutil.Process(process.pid)) for v, _, process in started]
        # The clients end on their own once the load has run for the warm-up and the duration.
        clients = [client(v, port, args, args.warmup + args.duration) for v, port, _ in started]
        # The load runs from about now (connecting takes a moment) to at least `end`.
        begin = time.monotonic()
        end = begin + args.warmup + args.duration
        moments = [*range(int(args.warmup), int(end - begin) - 5, int(args.interval)), end - begin - 5]
        for moment in moments:
            time.sleep(max(0.0, begin + moment - time.monotonic()))
            for result, process, measured in watched:
                if result.failure:
                    continue
                if not process.running():
                    result.failure = f"{exited(process, 'during the soak')}"
                    continue
                result.samples.append(footprint(measured, begin))
            print(
                f"  {moment:4.0f} s  "
                + "   ".join(
                    line(r.server, r.samples[-1]) for r, _, _ in watched if r.samples and not r.failure
                ),
                flush=True,
            )
        for (result, _, _), running_client in zip(watched, clients, strict=True):
            out, err = running_client.communicate(timeout=end - time.monotonic() + 120)
            why = client_failed(running_client.returncode, out, err)
            if why is not None:
                result.failure = result.failure or f"its client failed: {why}"
                continue
            result.client = json.loads(out)
        time.sleep(2)  # the clients' connections closed: what the servers still hold is theirs
        for result, process, measured in watched:
            if process.running():
                result.after = footprint(measured, begin)
    return list(results.values())


def row(result: Soaked) -> str:
    if result.failure or result.after is None or not result.samples:
        unmeasured = " | ".join([UNMEASURED] * 4)
        return f"| {result.server} | {unmeasured} | failed: {result.failure or 'not measured'} |"
    first, last, after = result.samples[0], result.samples[-1], result.after
    errors = sum(result.client.get("errors", {}).values())
    load = f"{result.client.get('throughput', 0):,.0f} req/s, {errors} errors"
    cells = [f"{s.rss_mib:.0f} MiB, {s.fds} fds, {s.threads} threads" for s in (first, last, after)]
    verdict = "; ".join(text for text, _ in result.judged()) or "no growth"
    return f"| {result.server} | {load} | {' | '.join(cells)} | {verdict} |"


def run(args: SoakSettings) -> int:
    minutes = (args.warmup + args.duration) / 60
    print(
        f"soak: every server at {args.rate:g} req/s over {args.connections} connections for {minutes:.1f} min"
    )
    busy = machine.busy(machine.facts())
    if busy:
        print(f"soak: {busy}")
    results = soak(args)
    sampled = [r.samples for r in results if r.samples] or [[Footprint(0, 0, 0, 0)]]
    first, last = sampled[0][0].seconds, sampled[0][-1].seconds
    print(f"\n| server | load | at {first:.0f} s | at {last:.0f} s | load gone | growth |")
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(row(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps({"settings": asdict(args), "servers": [asdict(r) for r in results]}, default=str)
    )
    print(f"\nwrote {path}")
    told = [f"{r.server} failed: {r.failure}" for r in results if r.failure]
    told += [f"{r.server}: {', '.join(r.growth())}" for r in results if r.growth()]
    if told:
        print("soak: " + "; ".join(told), file=sys.stderr)
        return 1
    return 0
