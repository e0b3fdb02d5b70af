"""``make dashboards``: build every dashboard with the SDK and write its JSON to grafana/dashboards/.

``python -m echolab.dashboards.build [DIR]``. The files are committed, so
that provisioning needs no build step; a test checks they equal a fresh build.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.models import dashboard as dm

from . import locust, overview
from .grafana import to_json

DASHBOARDS: dict[str, Callable[[], dm.Dashboard]] = {
    f"{overview.UID}.json": overview.build,
    f"{locust.UID}.json": locust.build,
}
DEFAULT_DIR = Path("grafana/dashboards")


def render() -> dict[str, str]:
    """Every dashboard's file name and JSON text."""
    return {name: to_json(build()) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else DEFAULT_DIR
    for name, text in render().items():
        (folder / name).write_text(text)
        print(f"wrote {folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
