"""The README is the front page of the manual in docs/: the manual's generated tables must match the
code, and the front page's links must lead somewhere (mkdocs build --strict checks docs/'s own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from echolab import docs

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("page", "marker", "table", "command"),
    [
        ("docs/configuration.md", "config-table", docs.config_table, "echolab config --markdown"),
        ("docs/metrics.md", "metrics-table", docs.metrics_table, "echolab config --metrics"),
    ],
)
def test_generated_tables_match_the_code(page: str, marker: str, table, command: str) -> None:
    text = (ROOT / page).read_text()
    match = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", text, re.S)
    assert match, f"{page} lacks the {marker} markers"
    assert match.group(1) == table(), f"run: {command}"


def test_the_two_commands_are_there() -> None:
    assert "make demo" in README and "make test" in README


def _anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub and MkDocs both spell them: lower case, punctuation gone, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_front_pages_links_lead_into_the_manual() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local), "the README links into docs/"
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in _anchors(target.read_text()), f"README links to {link}: no such heading"
