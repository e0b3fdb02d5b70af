"""The ephemeral PostgreSQL: the system's initdb and pg_ctl, real drivers, a crash and a restart, teardown."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
import psycopg
import pytest
from support.postgres import ephemeral_postgres

from echolab.lab.postgres import DATABASE, SUPERUSER, PostgreSQL, exited, find_binaries


def test_the_server_answers_both_drivers_with_the_settings_asked(postgres):
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT pg_sleep(0.05), 1").fetchone() == ("", 1)
        settings = conn.execute(
            "SELECT current_setting('max_connections'), current_setting('listen_addresses'), pg_backend_pid()"
        ).fetchone()
        # PostgreSQL refuses root: as root the server runs as Debian's postgres user, else as ourselves.
        expected = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        assert psutil.Process(settings[2]).username() == expected  # while the session's backend lives
    assert settings[:2] == (str(postgres.max_connections), "127.0.0.1")

    async def asyncpg_query() -> object:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            return await conn.fetchval("SELECT pg_sleep(0.05)::text || 'slept'")
        finally:
            await conn.close()

    assert asyncio.run(asyncpg_query()) == "slept"


def test_a_client_without_the_password_is_refused(postgres):
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=postgres.host, port=postgres.port, user=SUPERUSER, dbname=DATABASE, password="")


def test_max_connections_is_where_it_stops():
    with ephemeral_postgres(max_connections=5) as server:
        conns = [psycopg.connect(server.dsn) for _ in range(5)]
        try:
            with pytest.raises(psycopg.OperationalError, match="too many clients"):
                psycopg.connect(server.dsn)
        finally:
            for conn in conns:
                conn.close()


def test_stopped_immediately_it_refuses_then_serves_again_and_teardown_leaves_nothing():
    with PostgreSQL(max_connections=5) as server:
        folder, port = server.folder, server.port
        with psycopg.connect(server.dsn) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            conn.commit()
            server.stop("immediate")
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")  # the session died with the server
        assert not server.running()
        with pytest.raises(psycopg.OperationalError, match="refused"):
            psycopg.connect(server.dsn)
        server.start()
        assert server.port == port
        with psycopg.connect(server.dsn) as conn:  # same port, same data: recovered from the crash
            assert conn.execute("SELECT n FROM kept").fetchone() == (42,)
        pid = server.pid
    assert pid is not None and exited(pid)
    assert folder is not None and not folder.exists()


def make_binaries(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (folder / name).touch(mode=0o755)
    return folder


def test_binaries_come_from_path_then_the_newest_debian_version(tmp_path: Path):
    debian = str(tmp_path / "lib" / "postgresql" / "*" / "bin")
    make_binaries(tmp_path / "lib" / "postgresql" / "9" / "bin")
    newest = make_binaries(tmp_path / "lib" / "postgresql" / "16" / "bin")
    (tmp_path / "lib" / "postgresql" / "common" / "bin").mkdir(parents=True)
    assert find_binaries(path=str(tmp_path / "empty"), debian=debian) == newest
    # On PATH, as a symlink (as Homebrew and hand-made links do): the folder it points into.
    cellar = make_binaries(tmp_path / "cellar" / "bin")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pg_ctl").symlink_to(cellar / "pg_ctl")
    assert find_binaries(path=str(tmp_path / "bin"), debian=debian) == cellar
    assert find_binaries(path=str(tmp_path / "empty"), debian=str(tmp_path / "none" / "*")) is None


def test_the_check_make_test_runs_names_the_binaries():
    done = subprocess.run(
        [sys.executable, "-m", "echolab.lab.postgres"], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, str(find_binaries()))
