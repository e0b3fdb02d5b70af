"""The CPython a server runs under: found, described, and given a venv of its own.

``--python`` names an interpreter by path, by command (``python3.13``) or by
version (``3.13``, ``3.14t``). A command is looked up on PATH, then among
pyenv's versions: pyenv's shims are on PATH but run only the version that is
selected, so a shim that fails is not the last word.

A server under another interpreter runs from a venv made from this source
tree for it, ``.venv-<version>`` beside the project's own (``.venv-3.13``,
``.venv-3.14t``): made on first use, reused after, remade when
pyproject.toml changes. It holds the servers' dependencies only. One that
cannot be installed for that interpreter (a driver without a wheel for a
free-threaded build) is recorded, not fatal: what needs it is refused in one
line (:meth:`Venv.refuses`), and the rest runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MINIMUM = (3, 11)  # pyproject.toml's requires-python
PROBE_TIMEOUT = 30.0
INSTALL_TIMEOUT = 900.0
MARKER = "echolab-venv.json"  # in the venv: what it was made from, and what would not install

# What runs the probe: a CPython as it is, before any echolab code can be imported there.
PROBE = (
    "import json, platform, sys, sysconfig; print(json.dumps({"
    "'implementation': sys.implementation.name, 'version': platform.python_version(), "
    "'free_threaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')), "
    "'gil': sys._is_gil_enabled() if hasattr(sys, '_is_gil_enabled') else True, "
    "'executable': sys.executable}))"
)

# The servers' dependencies that only some servers or settings need (the rest, every server
# needs): one of these that will not install for an interpreter takes only those away.
OPTIONAL = frozenset(
    {"psycopg", "psycopg-pool", "asyncpg", "httpx", "requests", "uvloop", "gunicorn", "uvicorn",
     "uvicorn-worker", "httptools"}
)  # fmt: skip


CHOICES = {"loop": "uvloop", "io": "timer", "db_driver": "psycopg", "http_client": "httpx"}  # and defaults


def chosen(options: Sequence[str]) -> dict[str, str]:
    """The settings :func:`needed` reads, from a list of flags (the last one wins, as in argparse)."""
    values = dict(CHOICES)
    for i, option in enumerate(options[:-1]):
        name = option.removeprefix("--").replace("-", "_")
        if name in values:
            values[name] = options[i + 1]
    return values


def needed(server: str, values: Mapping[str, str]) -> dict[str, str]:
    """The optional distributions ``server`` needs with these settings (:data:`CHOICES`), and for what."""
    value = {**CHOICES, **values}
    needs: dict[str, str] = {}
    if server in ("threaded-http", "async-http"):
        needs["gunicorn"] = f"the {server} server"
    if server == "async-http":
        needs |= dict.fromkeys(("uvicorn", "uvicorn-worker", "httptools", "uvloop"), "the async-http server")
    if server == "async" and value["loop"] == "uvloop":
        needs["uvloop"] = "--loop uvloop"
    if value["io"] == "postgres" and value["db_driver"] == "asyncpg":
        needs["asyncpg"] = "--db-driver asyncpg"
    elif value["io"] == "postgres":
        needs |= dict.fromkeys(("psycopg", "psycopg-pool"), "--io postgres")
    if value["io"] == "http":
        client = value["http_client"]
        needs[client] = "--http-client requests" if client == "requests" else "--io http"
    return needs


class InterpreterError(Exception):
    """An interpreter that cannot run a server: one line, for exit status 2."""


@dataclass(frozen=True)
class Interpreter:
    executable: str
    version: str  # 3.13.0
    free_threaded: bool  # the build (python3.14t): whether the GIL can be off
    gil: bool  # whether it is on, at run time (PYTHON_GIL=0 turns a free-threaded build's off)

    @property
    def tag(self) -> str:
        """``3.13``, ``3.14t``: its venv's suffix and its name in the lab's tables."""
        return ".".join(self.version.split(".")[:2]) + ("t" if self.free_threaded else "")

    def facts(self) -> dict[str, str]:
        """For results and ``echo_server_info``: ``{"python": "3.14.0t", "gil": "off"}``."""
        return {
            "python": self.version + ("t" if self.free_threaded else ""),
            "gil": "on" if self.gil else "off",
        }


def here() -> Interpreter:
    """The interpreter running this process."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return Interpreter(
        sys.executable,
        platform.python_version(),
        bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        True if is_gil_enabled is None else bool(is_gil_enabled()),
    )


def pyenv_versions() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"


def candidates(spec: str) -> list[str]:
    """Where ``spec`` may be: itself if a path; else on PATH, then in each of pyenv's versions."""
    if os.sep in spec:
        return [spec]
    command = spec if spec.startswith("python") else f"python{spec}"
    found = [path for path in (shutil.which(command),) if path]
    wanted = command.removeprefix("python")
    versions = sorted(pyenv_versions().glob(f"{wanted.rstrip('t')}*"), reverse=True) if wanted else []
    found += [str(v / "bin" / command) for v in versions if (v / "bin" / command).is_file()]
    return found


def probe(executable: str) -> Interpreter:
    """What ``executable`` is; InterpreterError if it does not run or is not a CPython echolab runs on."""
    try:
        done = subprocess.run(
            [executable, "-I", "-c", PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT
        )
    except FileNotFoundError:
        raise InterpreterError(f"{executable}: no such interpreter") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InterpreterError(f"{executable}: does not run ({exc})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InterpreterError(f"{executable}: does not run (exit {done.returncode}: {last})")
    try:
        facts = json.loads(done.stdout)
    except ValueError:
        raise InterpreterError(f"{executable}: not a Python interpreter that echolab can use") from None
    if facts["implementation"] != "cpython":
        raise InterpreterError(f"{executable}: is {facts['implementation']}; echolab runs servers on CPython")
    version = tuple(int(part) for part in facts["version"].split(".")[:2])
    if version < MINIMUM:
        raise InterpreterError(
            f"{executable}: is Python {facts['version']}; echolab needs {MINIMUM[0]}.{MINIMUM[1]} or newer"
        )
    return Interpreter(facts["executable"], facts["version"], facts["free_threaded"], facts["gil"])


def find(spec: str) -> Interpreter:
    """The interpreter ``spec`` names (a path, a command, a version); InterpreterError in one line."""
    places = candidates(spec)
    if not places:
        raise InterpreterError(
            f"no interpreter {spec!r}: not on PATH nor among pyenv's versions ({pyenv_versions()})"
        )
    problems = []
    for place in places:
        try:
            return probe(place)
        except InterpreterError as exc:
            problems.append(exc)
    raise problems[-1]


def source_tree() -> Path:
    """The project this echolab runs from, which a venv installs; InterpreterError outside one."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise InterpreterError(
            f"--python needs echolab's source tree (a checkout); this one runs from {root}"
        )
    return root


def requirements(root: Path) -> list[str]:
    with open(root / "pyproject.toml", "rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def distribution(requirement: str) -> str:
    """``psycopg[binary]==3.3.9`` -> ``psycopg``."""
    for stop in "[=<>!~; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.lower()


@dataclass(frozen=True)
class Venv:
    """A venv made from the source tree for one interpreter."""

    path: Path
    interpreter: Interpreter
    unavailable: dict[str, str] = field(default_factory=dict)  # distribution: why it did not install

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def refuses(self, server: str, values: Mapping[str, str]) -> str | None:
        """Why ``server`` with these settings cannot run here (a dependency that did not install), or None."""
        for name, what in needed(server, values).items():
            if name in self.unavailable:
                why = self.unavailable[name]
                return f"{name}: {why}; {what} is not available under python{self.interpreter.tag}"
        return None


def fingerprint(root: Path, interpreter: Interpreter) -> str:
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes())
    digest.update(f"{interpreter.executable} {interpreter.version}".encode())
    return digest.hexdigest()[:16]


def venv(interpreter: Interpreter, say: Callable[[str], None]) -> Venv:
    """The venv for ``interpreter``, in the source tree, made on first use with one line through
    ``say``; InterpreterError in one line if it cannot be made at all."""
    root = source_tree()
    path = root / f".venv-{interpreter.tag}"
    stamp = fingerprint(root, interpreter)
    # Two commands that want the same venv (a demo, a server by hand): one makes it, the other waits.
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = path / MARKER
        if marker.is_file():
            made = json.loads(marker.read_text())
            if made.get("fingerprint") == stamp and (path / "bin" / "python").exists():
                return Venv(path, interpreter, made.get("unavailable", {}))
        say(
            f"making {path.name} for Python {interpreter.version} at {interpreter.executable} "
            "(first use: installs the servers' dependencies, about a minute)"
        )
        shutil.rmtree(path, ignore_errors=True)
        run([interpreter.executable, "-m", "venv", str(path)], f"python{interpreter.tag} -m venv")
        pip = pip_install(path)
        run([*pip, "--no-deps", "-e", str(root)], "installing echolab")
        unavailable = install_what_installs(pip, requirements(root))
        essential = sorted(set(unavailable) - OPTIONAL)
        if essential:
            name = essential[0]
            why = unavailable[name]
            raise InterpreterError(f"python{interpreter.tag}: {name}: {why}; no server can run there")
        marker.write_text(json.dumps({"fingerprint": stamp, "unavailable": unavailable}, indent=1))
    for name, why in unavailable.items():
        say(f"{name}: {why}; what needs it is not available under python{interpreter.tag}")
    return Venv(path, interpreter, unavailable)


def pip_install(venv_path: Path) -> list[str]:
    return [
        str(venv_path / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]


def install_what_installs(
    pip: Sequence[str], wanted: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Install ``wanted`` (requirements); {distribution: why} for those that would not install.

    All at once, then without each one pip names in its error; one by one if it names none.
    """
    unavailable: dict[str, str] = {}
    left = list(wanted)
    while left:
        problem = install([*pip, *left], env)
        if problem is None:
            break
        names = sorted((distribution(r) for r in left), key=len, reverse=True)
        named = next((name for name in names if name in problem.lower()), None)
        if named is None:
            for requirement in left:
                alone = install([*pip, requirement], env)
                if alone is not None:
                    unavailable[distribution(requirement)] = alone
            break
        unavailable[named] = problem
        left = [r for r in left if distribution(r) != named]
    return unavailable


def install(argv: Sequence[str], env: Mapping[str, str] | None) -> str | None:
    """pip install; None if it worked, else pip's reason, its error lines in one line."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
    if done.returncode == 0:
        return None
    errors = [
        line.removeprefix("ERROR:").strip() for line in done.stderr.splitlines() if line.startswith("ERROR:")
    ]
    return "; ".join(map(plainly, errors)) or (done.stderr.strip().splitlines() or ["pip failed"])[-1]


def plainly(error: str) -> str:
    """One of pip's error lines, said plainly for this use."""
    prefix = "No matching distribution found for "
    if error.startswith(prefix):
        return f"no wheel or source for this interpreter ({error.removeprefix(prefix)})"
    return error.split(": for help visit")[0]


def run(argv: Sequence[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InterpreterError(f"{what} failed: {last}")


def prepared(spec: str, say: Callable[[str], None]) -> Venv:
    """``spec``'s interpreter and its venv, made if need be: the one call the commands make."""
    return venv(find(spec), say)


# Where to look for a CPython besides this one, newest first.
LIKELY = ("3.14t", "3.14", "3.13t", "3.13", "3.12", "3.11")


def others() -> list[Interpreter]:
    """The CPythons besides this one that can run a server, one per version tag, newest first."""
    mine = here().tag
    found: dict[str, Interpreter] = {}
    for spec in LIKELY:
        try:
            interpreter = find(spec)
        except InterpreterError:
            continue
        if interpreter.tag != mine:
            found.setdefault(interpreter.tag, interpreter)
    return list(found.values())


def main() -> int:
    """``python -m echolab.interpreters``: the CPythons ``--python`` can use here; exit 1 if none."""
    found = others()
    for interpreter in found:
        gil = "free-threaded" if interpreter.free_threaded else "GIL"
        print(f"{interpreter.tag:<7} {interpreter.version} ({gil}) {interpreter.executable}")
    if not found:
        print(
            f"no CPython besides {here().version}: install one (uv python install 3.14t, pyenv install "
            "3.13, or the distribution's python3.x)",
            file=sys.stderr,
        )
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
