"""`echolab suite` (`make bench`), and its old name, which still runs it for one release."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.servers import run_command

from echolab.cli import OLD_SUITE_NOTICE

# No server's name contains this: the run measures nothing and writes its (empty) record.
NOTHING = ("--only", "no-such-server", "--scenario", "io")


@pytest.mark.parametrize(("command", "notice"), [("suite", False), ("benchmark", True)])
def test_the_old_name_runs_the_suite_with_a_one_line_notice(
    command: str, notice: bool, tmp_path: Path
) -> None:
    done = run_command(command, *NOTHING, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert [path.name.split("-")[0] for path in tmp_path.iterdir()] == ["scenarios"]
    assert done.stderr.splitlines() == ([OLD_SUITE_NOTICE] if notice else []), done.stderr
