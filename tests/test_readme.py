"""The README is the user's manual: its generated parts must match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from echolab import docs

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize(
    ("marker", "table", "command"),
    [
        ("config-table", docs.config_table, "echolab config --markdown"),
        ("metrics-table", docs.metrics_table, "echolab config --metrics"),
    ],
)
def test_generated_tables_match_the_code(marker: str, table, command: str) -> None:
    match = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", README, re.S)
    assert match, f"README lacks the {marker} markers"
    assert match.group(1) == table(), f"run: {command}"


def test_the_two_commands_are_there() -> None:
    assert "make demo" in README and "make test" in README
