"""Every file rendered from the code, by its path in the repository: `make generate` writes them all.

A test renders each afresh and compares it with the committed file, as the
manual's tables are checked against the code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import compose, envfile, kubernetes

# Each renders from the code and, for the files that list or transform others, the repository at ``root``.
FILES: dict[str, Callable[[Path], str]] = {
    "docker-compose.yml": lambda _: compose.compose_file(),
    "docker-compose.remote-workers.yml": lambda _: compose.remote_workers_file(),
    ".env.example": lambda _: envfile.render(),
    **kubernetes.FILES,
}


def write(root: Path) -> list[str]:
    """Render every file under ``root``; return the paths that changed."""
    changed = []
    for path, render in FILES.items():
        target = root / path
        text = render(root)
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            changed.append(path)
    return changed
