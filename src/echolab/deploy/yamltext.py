"""YAML as the generated files are written: block style, short lists of words inline, text as blocks."""

from __future__ import annotations

import re
from typing import Any

import yaml


def dump(data: Any) -> str:
    text: str = yaml.dump(data, Dumper=Dumper, sort_keys=False, width=110)
    return text


def dump_all(documents: list[Any]) -> str:
    text: str = yaml.dump_all(documents, Dumper=Dumper, sort_keys=False, width=110)
    return text


WORD = re.compile(r"[\w./=-]+")


class Dumper(yaml.SafeDumper):
    """Block style, with short lists of words on one line and text with newlines as literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # list items indented under their key


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    short = all(isinstance(i, str) and WORD.fullmatch(i) for i in items) and sum(map(len, items)) < 60
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=short)


def _represent_none(dumper: yaml.SafeDumper, _: None) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:null", "")


Dumper.add_representer(str, _represent_str)
Dumper.add_representer(list, _represent_list)
Dumper.add_representer(type(None), _represent_none)
