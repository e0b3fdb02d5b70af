"""Reading /metrics: one scrape as a dict, deltas between scrapes, polling until a condition holds."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

from .waiting import TIMEOUT, poll_until


class Metrics(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """One /metrics scrape: (sample name, labels) -> value. ``after - before`` gives deltas."""

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls(
            ((sample.name, frozenset(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        )

    def value(self, name: str, **labels: str) -> float:
        """The sum over the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, have), v in self.items() if n == name and wanted <= have)

    def query(self, query: str) -> float:
        """``value`` for a PromQL-like selector: ``echo_requests_total{outcome="ok"}``."""
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})?", query)
        assert match, query
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        return self.value(match.group(1), **labels)

    def counts(self, queries: Iterable[str]) -> dict[str, float]:
        """``{query: value}``: tests write ``assert delta.counts(expected) == expected``."""
        return {query: self.query(query) for query in queries}

    def labels(self, name: str) -> dict[str, str]:
        """The labels of the one sample of ``name`` (for info metrics)."""
        found = [dict(have) for (n, have) in self if n == name]
        assert len(found) == 1, f"{name}: {found}"
        return found[0]

    def __sub__(self, other: Metrics) -> Metrics:  # type: ignore[override]
        return Metrics({key: value - other.get(key, 0.0) for key, value in self.items()})

    def __repr__(self) -> str:  # sorted, for the message of a wait that failed
        return repr(sorted(self.items()))


def scrape(url: str) -> Metrics:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return Metrics.parse(response.read().decode())


def wait_for(
    url: str, predicate: Callable[[Metrics], bool], timeout: float = TIMEOUT, alive: Callable[[], str] = str
) -> Metrics:
    """Scrape ``url`` until ``predicate`` holds; fail with the last scrape if it never does.

    ``alive()`` returns why the process behind ``url`` cannot get there any
    more (it exited), or "" while it can.
    """
    return poll_until(
        lambda: scrape(url), predicate, what=f"metrics matching {predicate}", timeout=timeout, gone=alive
    )
