"""``echolab soak`` (``make soak``): every server under a steady load for minutes: does anything grow?

A leak hides from short runs: a descriptor, a thread or a few objects per
connection or per request only show after many. Every server of the
catalogue runs natively, each under its own ``echolab bench`` client at a
fixed rate (open loop) for the whole run, all at once. The servers' resident
memory, open descriptors and threads (summed over a gunicorn master and its
workers) are sampled after the warm-up, every ``--interval`` seconds, at the
end of the load, and once the clients have gone. Growth from the first
loaded sample to the last beyond the noise allowed below is reported as a
leak, and the exit status is 1.

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

from ..launcher import HOST, Process
from ..settings import SoakSettings
from .contenders import SERVERS_AS_THEY_ARE, Contender, running
from .sweep import tree

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

    def growth(self) -> list[str]:
        """What grew beyond the noise from the first loaded sample to the last."""
        first, last = self.samples[0], self.samples[-1]
        grew = []
        ratio, mib = RSS_NOISE
        if last.rss_mib > first.rss_mib * ratio and last.rss_mib - first.rss_mib > mib:
            grew.append(f"memory {first.rss_mib:.0f} -> {last.rss_mib:.0f} MiB")
        for what in ("fds", "threads"):
            before, now = getattr(first, what), getattr(last, what)
            if now - before > COUNT_NOISE:
                grew.append(f"{what} {before} -> {now}")
        return grew


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
def servers(delay_ms: float) -> Iterator[list[tuple[Contender, int, Process]]]:
    with contextlib.ExitStack() as stack:
        yield [(v, *stack.enter_context(running(v, delay_ms))) for v in SERVERS_AS_THEY_ARE]


def soak(args: SoakSettings) -> list[Soaked]:
    results = [Soaked(v.name) for v in SERVERS_AS_THEY_ARE]
    with servers(args.delay_ms) as started:
        processes = [psutil.Process(process.pid) for _, _, process in started]
        # The clients end on their own once the load has run for the warm-up and the duration.
        clients = [client(v, port, args, args.warmup + args.duration) for v, port, _ in started]
        # The load runs from about now (connecting takes a moment) to at least `end`.
        begin = time.monotonic()
        end = begin + args.warmup + args.duration
        moments = [*range(int(args.warmup), int(end - begin) - 5, int(args.interval)), end - begin - 5]
        for moment in moments:
            time.sleep(max(0.0, begin + moment - time.monotonic()))
            for result, process in zip(results, processes, strict=True):
                result.samples.append(footprint(process, begin))
            print(
                f"  {moment:4.0f} s  " + "   ".join(line(r.server, r.samples[-1]) for r in results),
                flush=True,
            )
        for result, running_client in zip(results, clients, strict=True):
            out, err = running_client.communicate(timeout=end - time.monotonic() + 120)
            if running_client.returncode != 0:
                raise RuntimeError(f"{result.server}'s client failed: {err.strip()[-500:]}")
            result.client = json.loads(out)
        time.sleep(2)  # the clients' connections closed: what the servers still hold is theirs
        for result, process in zip(results, processes, strict=True):
            result.after = footprint(process, begin)
    return results


def row(result: Soaked) -> str:
    first, last, after = result.samples[0], result.samples[-1], result.after
    assert after is not None
    errors = sum(result.client.get("errors", {}).values())
    load = f"{result.client.get('throughput', 0):,.0f} req/s, {errors} errors"
    cells = [f"{s.rss_mib:.0f} MiB, {s.fds} fds, {s.threads} threads" for s in (first, last, after)]
    verdict = "; ".join(result.growth()) or "no growth"
    return f"| {result.server} | {load} | {' | '.join(cells)} | {verdict} |"


def run(args: SoakSettings) -> int:
    minutes = (args.warmup + args.duration) / 60
    print(
        f"soak: every server at {args.rate:g} req/s over {args.connections} connections for {minutes:.1f} min"
    )
    results = soak(args)
    first, last = results[0].samples[0].seconds, results[0].samples[-1].seconds
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
    leaks = [f"{r.server}: {', '.join(r.growth())}" for r in results if r.growth()]
    if leaks:
        print("soak: grew beyond noise: " + "; ".join(leaks), file=sys.stderr)
        return 1
    return 0
