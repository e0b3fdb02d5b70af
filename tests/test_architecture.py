"""docs/architecture.md is the layers contract in words: its blocks are pyproject.toml's contracts
(which `make lint` checks the imports against), and the modules it names exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "architecture.md").read_text()
CONTRACTS: list[dict[str, Any]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
    "importlinter"
]["contracts"]
LAYERS = [contract for contract in CONTRACTS if contract["type"] == "layers"]


def blocks() -> dict[str, list[str]]:
    """The page's layer blocks: a container's name, then a layer a line (its description after two spaces)."""
    found = {}
    for block in re.findall(r"```text\n(.*?)```", PAGE, re.S):
        container, *lines = block.strip("\n").splitlines()
        found[container] = [re.split(r"\s{2,}", line.strip())[0] for line in lines]
    return found


@pytest.mark.parametrize("contract", LAYERS, ids=[contract["id"] for contract in LAYERS])
def test_the_page_shows_each_layers_contract(contract: dict[str, Any]) -> None:
    (container,) = contract["containers"]
    assert blocks().get(container) == contract["layers"], "docs/architecture.md and pyproject.toml differ"


def test_every_module_the_page_names_exists() -> None:
    named = set(re.findall(r"`((?:[\w.]+/)*\w+\.py)`", PAGE))
    assert len(named) > 20
    missing = [
        p for p in named if not (ROOT / p if p.startswith("tests/") else ROOT / "src/echolab" / p).is_file()
    ]
    assert not missing, f"docs/architecture.md names modules that are not there: {sorted(missing)}"
