"""The README is the user's manual: its generated parts must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from echolab import config, metrics

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_configuration_table_is_generated_from_the_settings() -> None:
    match = re.search(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", README, re.S)
    assert match, "README lacks the config-table markers"
    assert match.group(1) == config.markdown_table(), "run: echolab config --markdown"


def test_every_server_metric_is_documented() -> None:
    for name in metrics.DOCS:
        suffix = "_info" if name == "echo_server" else ""
        assert f"`{name}{suffix}" in README, f"{name} missing from the README's metrics table"


def test_the_two_commands_are_there() -> None:
    assert "make demo" in README and "make test" in README
