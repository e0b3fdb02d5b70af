"""The groups of tests that one pytest-xdist worker runs one after the other (``--dist loadgroup``).

Every other test runs beside the rest of the suite, on a machine with more
workers than cores: the suite mostly waits for servers and clients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

Test = TypeVar("Test", bound=Callable[..., object])
# Tests whose checks rest on the CPU time a server measures, or that load the machine for
# seconds (Locust measuring capacity, the monitoring pipeline): one at a time.
MEASURING = pytest.mark.xdist_group("measuring")


def with_demo_runs(test: Test) -> Test:
    """A test that reads the two demo runs of one session fixture: it runs where they ran, with the
    time they take (20 s on a quiet machine; minutes beside the rest of the suite)."""
    return pytest.mark.timeout(300)(pytest.mark.xdist_group("demo-runs")(test))


# The tests that start the servers on the catalogue's ports when free (make locust): two at once
# would both find a port free, and one of them then fail to bind it.
CATALOGUE_PORTS = pytest.mark.xdist_group("catalogue-ports")
