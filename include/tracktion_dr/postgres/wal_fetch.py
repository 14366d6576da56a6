"""``restore_command`` for a WAL archive on S3: fetch one segment, verified, for PostgreSQL.

PostgreSQL runs ``restore_command`` with ``%f`` (the file it wants) and ``%p`` (where to
put it) and treats any non-zero exit as "not available". This program::

    python -I .../tracktion_dr/postgres/wal_fetch.py <config.json> %f %p
    python -m tracktion_dr.postgres.wal_fetch <config.json> %f %p      (the same)

looks for ``<f>.zst`` then ``<f>`` in the local mirror of the archive (what the guard
downloaded and verified), else downloads it from the s3:// archive - hashing it against
the ``sha256`` metadata the offsite copy wrote, into a hidden ``.partial`` file renamed
into the mirror only when it matches - and writes it to ``%p`` (``zstd -d`` for ``.zst``;
zstd also checks its frame checksum). Exit 0: written; 1: in neither place (quiet: a
standby asks for the next segment every few seconds); 2: any other problem (said on
stderr, which PostgreSQL logs).

Credentials never appear in ``postgresql.auto.conf``: the command names a JSON file
(``backups/s3_objects.write_fetch_config``) that only the cluster's OS user can read, with
the bucket, prefix, mirror, endpoint/region and - when the Airflow connection has them -
the access key; without keys boto3's own chain is used (an instance profile on the host).

It runs inside the server's process tree, often under an interpreter that is not the
worker's virtualenv (which the server's OS user may not be allowed to run), so it imports
nothing of this project: the standard library, plus boto3 from the ``sys_path`` the
config names (the worker's site-packages).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

COMPRESSED_SUFFIX = ".zst"
SHA256_METADATA = "sha256"
EXIT_FETCHED, EXIT_MISSING, EXIT_ERROR = 0, 1, 2
FALLBACK_PYTHONS = ("/usr/bin/python3",)
SCRATCH_PREFIX = ".fetched."


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: wal_fetch.py <config.json> <%f> <%p>", file=sys.stderr)
        return EXIT_ERROR
    config_path, wanted, destination = args
    try:
        config = json.loads(Path(config_path).read_text())
        return fetch(config, wanted, Path(destination))
    except Exception as exc:  # PostgreSQL logs stderr; the exit code is what it acts on
        print(f"wal_fetch {wanted}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def fetch(config: dict[str, Any], wanted: str, destination: Path) -> int:
    if "/" in wanted or wanted.startswith("."):
        raise ValueError(f"not a WAL file name: {wanted!r}")
    mirror = Path(config["mirror"])
    for name in (wanted + COMPRESSED_SUFFIX, wanted):
        local = mirror / name
        if local.is_file():
            deliver(local, destination)
            return EXIT_FETCHED
    client = s3_client(config)
    for name in (wanted + COMPRESSED_SUFFIX, wanted):
        key = "/".join(p for p in (config["prefix"], name) if p)
        local = download(client, config["bucket"], key, mirror / name, destination.parent)
        if local is not None:
            deliver(local, destination)
            return EXIT_FETCHED
    return EXIT_MISSING


def s3_client(config: dict[str, Any]) -> Any:
    for entry in config.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)
    import boto3
    from botocore.config import Config

    credentials = {
        k: config[k]
        for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
        if config.get(k)
    }
    return boto3.client(
        "s3",
        endpoint_url=config.get("endpoint_url") or None,
        region_name=config.get("region_name") or None,
        config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3}),
        **credentials,
    )


def download(client: Any, bucket: str, key: str, cached: Path, scratch: Path) -> Path | None:
    """The verified object (cached into the mirror when it is writable), None if absent."""
    from botocore.exceptions import ClientError

    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    expected = response.get("Metadata", {}).get(SHA256_METADATA)
    if not expected:
        raise ValueError(f"s3://{bucket}/{key} has no sha256 metadata: refusing unverified WAL")
    folder = cached.parent if os.access(cached.parent, os.W_OK) else scratch
    partial = folder / f".{cached.name}.partial"
    digest = hashlib.sha256()
    body = response["Body"]
    with partial.open("wb") as out:
        for block in iter(lambda: body.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
        # On disk before it takes its verified name: the mirror serves names on sight.
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != expected:
        partial.unlink()
        raise ValueError(f"s3://{bucket}/{key}: sha256 does not match its metadata")
    target = cached if folder == cached.parent else folder / f"{SCRATCH_PREFIX}{cached.name}"
    os.replace(partial, target)
    return target


def deliver(source: Path, destination: Path) -> None:
    """Write the segment where PostgreSQL asked: decompressed, or copied as it is."""
    if source.name.endswith(COMPRESSED_SUFFIX):
        result = subprocess.run(
            ["zstd", "-d", "-q", "-f", "-o", str(destination), str(source)],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(f"zstd -d {source.name}: {result.stderr.strip()[-300:]}")
    else:
        shutil.copyfile(source, destination)
    if source.name.startswith(SCRATCH_PREFIX):  # not cacheable (read-only mirror)
        source.unlink()


# --- building the command (run by the worker, not by PostgreSQL) ------------------------


def restore_command(archive: Path, salvage: Path | None, config: Path, python: str) -> str:
    """The shell line PostgreSQL runs: the mirror by ``test -f`` first (no interpreter
    started for segments already verified there), then this program, then the salvage
    folder. Same quoting and length rules as ``pitr.restore_command_for``."""
    from tracktion_dr.postgres.wal import checked_length

    def quoted(path: Path | str) -> str:
        return shlex.quote(str(path).replace("%", "%%"))

    command = f"a={quoted(archive)}; "
    if salvage is not None:
        command += f"s={quoted(salvage)}; "
    command += (
        f'if test -f "$a/%f{COMPRESSED_SUFFIX}"; then zstd -dqf "$a/%f{COMPRESSED_SUFFIX}" -o %p; '
        'elif test -f "$a/%f"; then cp "$a/%f" %p; '
        f"elif {quoted(python)} -I {quoted(Path(__file__).resolve())} {quoted(config)} %f %p; "
        "then :; "
    )
    if salvage is not None:
        command += 'elif test -f "$s/%f"; then cp "$s/%f" %p; '
    return checked_length(command + "else exit 1; fi", "restore_command")


def interpreter_for(os_user: str) -> str:
    """A Python the server's OS user can run, of the worker's version (the worker's
    site-packages, pure-Python boto3 included, are put on its path by the config)."""
    from tracktion_dr.postgres.commands import as_os_user

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, *FALLBACK_PYTHONS):
        if not candidate or not Path(candidate).exists():
            continue
        try:
            result = subprocess.run(
                as_os_user(
                    [
                        candidate,
                        "-I",
                        "-c",
                        "import sys; print('%d.%d' % sys.version_info[:2])",
                    ],
                    os_user,
                ),
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip() == version:
            return candidate
    raise RuntimeError(
        f"no Python {version} that the OS user {os_user} may run (tried {sys.executable} "
        f"and {', '.join(FALLBACK_PYTHONS)}): restore_command cannot fetch WAL from S3"
    )


def worker_sys_path() -> list[str]:
    """The folders boto3 and its dependencies are imported from in this (worker) process."""
    import boto3
    import botocore
    import dateutil
    import jmespath
    import s3transfer
    import urllib3

    return sorted(
        {
            str(Path(module.__file__).resolve().parents[1])  # type: ignore[arg-type]
            for module in (boto3, botocore, s3transfer, jmespath, dateutil, urllib3)
        }
        | {
            str(Path(module.__file__).resolve().parent)  # single-file modules (six)
            for module in _single_file_modules()
        }
    )


def _single_file_modules() -> list[Any]:
    try:
        import six
    except ImportError:
        return []
    return [six]


if __name__ == "__main__":
    sys.exit(main())
