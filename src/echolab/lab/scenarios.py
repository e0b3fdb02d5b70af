"""The workloads the lab compares the servers under: one preset of server settings each.

Every server runs a scenario with the same flags, so the only difference
between two rows of a scenario is the server. ``io`` is the article's
workload (awaited IO only); the others add the work that decides the answer
for most services (see the README's "Reading").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # what it stands for, in one line
    options: tuple[str, ...]  # `echolab serve` flags, the same for every server
    delay_hint_ms: float  # the time one request takes on an idle server: the Little's-law bound's D

    def bound(self, connections: int) -> float | None:
        """Requests/s a closed loop of ``connections`` cannot exceed."""
        return connections / (self.delay_hint_ms / 1000) if self.delay_hint_ms > 0 else None


IO = Scenario("io", "100 ms of awaited IO per request, nothing else", ("--delay-ms", "100"), 100.0)
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (IO,)}
