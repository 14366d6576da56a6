"""Running PostgreSQL programs: argument lists, never a shell; secrets only in env.

Server-side programs (pg_ctl, postgres, pg_verifybackup on a data directory) must run as the
cluster's OS user (PostgreSQL refuses root); clients (pg_dump, pg_restore, pg_basebackup)
get the password through ``PGPASSWORD`` in their environment, never on the command line.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from tracktion_dr.core.errors import CommandError

log = logging.getLogger(__name__)

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect. ``password`` never leaves this process except in a
    child's environment."""

    host: str
    port: int
    user: str
    password: str
    dbname: str = "postgres"

    def conninfo(self, dbname: str | None = None, **extra: str) -> str:
        return make_conninfo(
            host=self.host,
            port=str(self.port),
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            **extra,
        )

    def client_args(self) -> list[str]:
        return [
            f"--host={self.host}",
            f"--port={self.port}",
            f"--username={self.user}",
            "--no-password",
        ]

    def client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}

    def with_database(self, dbname: str) -> Endpoint:
        return Endpoint(self.host, self.port, self.user, self.password, dbname)


def endpoint_from_connection(connection: Any, dbname: str | None = None) -> Endpoint:
    """An Airflow connection (task SDK or api-server model: anything with host, port,
    login, password, schema) as an Endpoint. The password stays in memory."""
    return Endpoint(
        host=connection.host or "127.0.0.1",
        port=int(connection.port or 5432),
        user=connection.login or "postgres",
        password=connection.password or "",
        dbname=dbname or connection.schema or "postgres",
    )


def as_os_user(argv: Sequence[str], os_user: str) -> list[str]:
    """Prefix ``argv`` so it runs as ``os_user`` when we are root."""
    if os.geteuid() == 0 and os_user != "root":
        return ["runuser", "-u", os_user, "--", *argv]
    return list(argv)


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a program and raise ``CommandError`` with its stderr if it fails."""
    log.info("running %s: %s", what, " ".join(argv))
    try:
        result = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{what} did not finish within {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise CommandError(f"{what} failed (exit {result.returncode}): {detail}")
    return result


def chown_tree(path: Path, os_user: str, *, recursive: bool = True) -> None:
    """Hand ``path`` (and everything below) to ``os_user``; a no-op unless we are root."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(os_user)
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    if recursive and path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
