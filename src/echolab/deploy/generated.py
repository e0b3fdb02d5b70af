"""Every file rendered from the code, by its path in the repository: `make generate` writes them all.

A test renders each afresh and compares it with the committed file, as the
README's tables are checked against the code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import compose, envfile

FILES: dict[str, Callable[[], str]] = {
    "docker-compose.yml": compose.compose_file,
    "docker-compose.remote-workers.yml": compose.remote_workers_file,
    ".env.example": envfile.render,
}


def write(root: Path) -> list[str]:
    """Render every file under ``root``; return the paths that changed."""
    changed = []
    for path, render in FILES.items():
        target = root / path
        text = render()
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            changed.append(path)
    return changed
