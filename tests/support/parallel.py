"""The groups of tests that one pytest-xdist worker runs one after the other (``--dist loadgroup``).

Every other test runs beside the rest of the suite, on a machine with more
workers than cores: the suite mostly waits for servers and clients.
"""

from __future__ import annotations

import pytest

# Tests whose checks rest on the CPU time a server measures, or that load the machine for
# seconds (Locust measuring capacity, the monitoring pipeline): one at a time.
MEASURING = pytest.mark.xdist_group("measuring")
# The tests that read the two demo runs of one session fixture: run where it ran.
DEMO_RUNS = pytest.mark.xdist_group("demo-runs")
