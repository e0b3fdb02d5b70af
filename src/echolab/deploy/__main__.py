"""``python -m echolab.deploy [ROOT]``: write every generated file under ROOT (default: here)."""

from __future__ import annotations

import sys
from pathlib import Path

from .generated import FILES, write


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path.cwd()
    changed = write(root)
    print(f"{len(FILES)} generated files, {len(changed)} rewritten" + "".join(f"\n  {p}" for p in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
