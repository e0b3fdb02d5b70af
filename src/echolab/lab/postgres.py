"""An ephemeral PostgreSQL from the system's binaries: for the lab's database scenarios and the tests.

``with PostgreSQL(max_connections=100) as db: ... db.dsn ...`` runs
``initdb`` in a temporary folder, starts the server on a free loopback port
with ``pg_ctl start -w``, and at the end stops it (``pg_ctl stop -m fast``)
and removes the folder. In between, ``db.stop("immediate")`` kills it as a
crash would and ``db.start()`` brings it back on the same port and data:
the fault injection of the tests. Its superuser ``echolab`` logs in with a
random password (SCRAM), over TCP on 127.0.0.1 only.

PostgreSQL refuses to run as root, and CI runs as root: then ``initdb``,
``pg_ctl`` and the server run as the unprivileged ``postgres`` user that
Debian's package creates, in a folder that user owns; as anyone else, as
that user. The binaries come from ``PATH`` or, since Debian keeps them off
it, from the newest ``/usr/lib/postgresql/<version>/bin``.

Why not pytest-postgresql's executor (``PostgreSQLExecutor``, 10.0)? It does
the same steps (``pg_ctl initdb``, then ``pg_ctl start`` under mirakuru) but
runs every command as the current user, with no way to run them as another
(initdb, the status and the stop call ``subprocess`` directly): as root
initdb refuses to start. It stops with ``-m fast`` only, and its data folder
and log must be writable by whoever runs it. It is also a pytest plugin
(pytest, mirakuru, port-for) where the lab's demo needs the same server
outside pytest. Run as another user, with an immediate stop and a restart on
the same port, what is left of it is ``initdb`` and ``pg_ctl``, which this
module calls directly; from it we keep its choices: server settings given at
start, no fsync, logging to a file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import psutil

from ..launcher import HOST, free_port

DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
INSTALL = "sudo apt-get install postgresql (Debian, Ubuntu) or brew install postgresql (macOS)"
RUN_AS = "postgres"  # the unprivileged user of Debian's package, for when we are root
SUPERUSER = "echolab"
DATABASE = "postgres"
TIMEOUT = 60  # seconds for initdb, or for the server to start or stop
PORT_ATTEMPTS = 3  # a free port can be taken by another process before the server binds it
LOG_TAIL = 2000

StopMode = Literal["fast", "immediate"]


class Unavailable(RuntimeError):
    """PostgreSQL cannot run here; the message says why and how to install it, in one line."""


class PostgresError(RuntimeError):
    """initdb or pg_ctl failed; the message ends with the server log's tail."""


def find_binaries(path: str | None = None, debian: str | None = None) -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: the one of ``pg_ctl`` on ``path`` (default ``PATH``),
    symlinks followed; else the newest Debian version's (``debian``, default :data:`DEBIAN_BINARIES`).
    None if neither has both."""
    debian = debian or DEBIAN_BINARIES  # read now: a test points it at an empty folder
    found = shutil.which("pg_ctl", path=path)
    candidates = [Path(found).resolve().parent] if found else []
    versions = [Path(folder) for folder in glob.glob(debian) if Path(folder).parent.name.isdigit()]
    candidates += sorted(versions, key=lambda folder: int(folder.parent.name), reverse=True)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def run_as_user() -> pwd.struct_passwd | None:
    """Whom PostgreSQL runs as: None for ourselves, the ``postgres`` user if we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        raise Unavailable(
            f"PostgreSQL refuses to run as root, and there is no {RUN_AS!r} user to run it as: "
            f"installing it ({INSTALL}) creates one"
        ) from None


def unavailable() -> str | None:
    """Why PostgreSQL cannot run here, with how to install it, in one line; None when it can."""
    if find_binaries() is None:
        return (
            f"PostgreSQL is not installed (no initdb and pg_ctl on PATH nor in {DEBIAN_BINARIES}): {INSTALL}"
        )
    try:
        run_as_user()
    except Unavailable as exc:
        return str(exc)
    return None


def exited(pid: int) -> bool:
    """Whether process ``pid`` is gone (a zombie, left to a parent that does not reap it, is)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


class PostgreSQL:
    """One ephemeral server: ``start`` (initdb the first time), ``stop``, ``close``; a context manager."""

    def __init__(self, max_connections: int = 100, host: str = HOST) -> None:
        binaries = find_binaries()
        if binaries is None:
            raise Unavailable(unavailable())
        self.binaries = binaries
        self.user = run_as_user()
        self.max_connections = max_connections
        self.host = host
        self.port = 0
        self.password = secrets.token_urlsafe(18)
        self.folder: Path | None = None

    @property
    def dsn(self) -> str:
        """A libpq URL: psycopg and asyncpg take it as it is."""
        return f"postgresql://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{DATABASE}"

    @property
    def data(self) -> Path:
        assert self.folder is not None, "not started"
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        assert self.folder is not None, "not started"
        return self.folder / "postgres.log"

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        return ""

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while its pid file is there."""
        with contextlib.suppress(OSError, ValueError, AssertionError):
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        return None

    # --- running the binaries ------------------------------------------------------

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``program`` of the binaries' folder, run as PostgreSQL's user; PostgresError if it fails."""
        # Only the C locale is everywhere; libpq's PG* variables could point initdb or pg_ctl elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))} | {"LC_ALL": "C"}
        user = self.user
        done = subprocess.run(
            [str(self.binaries / program), *args], capture_output=True, text=True, env=env, cwd=self.folder,
            timeout=TIMEOUT + 10, check=False,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,  # not root's groups
        )  # fmt: skip
        if check and done.returncode != 0:
            command = program if program == "initdb" else f"{program} {args[0]}"
            output = (done.stderr or done.stdout).strip()
            raise PostgresError(f"{command} failed ({done.returncode}): {output}\n{self.tail()}")
        return done

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _initdb(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="echolab-postgres-"))
        self._own(self.folder)
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        self._own(password_file)
        try:
            self._run(
                "initdb", "--pgdata", str(self.data), "--username", SUPERUSER, "--pwfile", str(password_file),
                "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync",
                "--no-instructions",
            )  # fmt: skip
        finally:
            password_file.unlink()

    def _configure(self) -> None:
        """The server's settings, after initdb's: a later line of postgresql.conf wins."""
        settings = {
            "port": str(self.port),
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": f"'{self.folder}'",  # not /var/run/postgresql: ours alone
            "max_connections": str(self.max_connections),
            # A scratch database: nothing to keep across a crash of the machine. A crash of the server
            # (stop immediate) still loses nothing committed: the WAL is written at commit, if not synced.
            "fsync": "off",
            "full_page_writes": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# echolab\n" + "".join(f"{name} = {value}\n" for name, value in settings.items()))

    def _pg_ctl(self, action: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", action, "--pgdata", str(self.data), *args, check=check)

    # --- the lifecycle -------------------------------------------------------------

    def start(self) -> PostgreSQL:
        """Start the server: the first time on a new data folder and a free port; after ``stop``, the same."""
        first = self.folder is None
        if first:
            self._initdb()
        wait = ("--wait", "--timeout", str(TIMEOUT), "--log", str(self.log_path))
        if not first:
            self._pg_ctl("start", *wait)
            return self
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = free_port(self.host)
            self._configure()
            self.log_path.unlink(missing_ok=True)  # this attempt's log only
            try:
                self._pg_ctl("start", *wait)
            except PostgresError:
                if attempt == PORT_ATTEMPTS or "already in use" not in self.tail():
                    raise
            else:
                break
        return self

    def running(self) -> bool:
        return self.folder is not None and self._pg_ctl("status", check=False).returncode == 0

    def stop(self, mode: StopMode = "fast") -> None:
        """fast: roll back the sessions and shut down cleanly. immediate: quit at once, as a crash would;
        the next start recovers."""
        pid = self.pid
        self._pg_ctl("stop", "--wait", "--timeout", str(TIMEOUT), "--mode", mode)
        # pg_ctl returns once the pid file is gone, which the server removes just before it exits.
        deadline = time.monotonic() + TIMEOUT
        while pid is not None and not exited(pid):
            if time.monotonic() > deadline:
                raise PostgresError(f"the server (pid {pid}) still runs {TIMEOUT}s after pg_ctl stop")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the server if it runs and remove its folder: nothing of it is left."""
        if self.folder is None:
            return
        try:
            if self.running():
                self.stop()
        except (PostgresError, subprocess.TimeoutExpired):
            pid = self.pid
            if pid is not None:  # a server that will not stop must not outlive its folder
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> PostgreSQL:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if __name__ == "__main__":
    # make test's check: the binaries' folder, or why PostgreSQL cannot run here (exit 1).
    reason = unavailable()
    print(reason or find_binaries(), file=sys.stderr if reason else sys.stdout)
    sys.exit(1 if reason else 0)
