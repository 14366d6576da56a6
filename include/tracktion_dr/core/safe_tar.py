"""Extracting a tar archive safely on every Python this project runs on.

tarfile's extraction filters (PEP 706) came in Python 3.11.4; Debian bookworm's 3.11.2
(the deployment image's) has none and refuses the ``filter`` argument.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

HAS_EXTRACTION_FILTERS = hasattr(tarfile, "data_filter")


def extract_as_data(
    opened: tarfile.TarFile,
    destination: Path,
    native: bool = HAS_EXTRACTION_FILTERS,
    *,
    keep_modes: bool = False,
) -> None:
    """Extract with tarfile's ``data`` filter (``keep_modes``: its ``tar`` filter, which
    keeps each directory's mode - a PostgreSQL data directory must stay 0700/0750, and the
    ``data`` filter makes every directory 0755); without filters (``native`` False), a
    stricter stand-in: only regular files and directories, every name inside
    ``destination``, owned by whoever extracts, modes kept without setuid/setgid/sticky or
    group/other write bits. A member that breaks these fails the whole extraction before
    anything is written."""
    if native:
        chosen = "tar" if keep_modes else "data"  # both refuse names outside destination
        opened.extractall(destination, filter=chosen)  # noqa: S202
        return
    root = destination.resolve()
    members = opened.getmembers()
    for member in members:
        target = (root / member.name).resolve()
        if os.path.isabs(member.name) or (target != root and root not in target.parents):
            raise tarfile.TarError(f"{member.name!r} would land outside {destination}")
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{member.name!r} is not a regular file or directory")
        member.mode = member.mode & 0o755 | (0o600 if member.isfile() else 0o700)
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    opened.extractall(destination, members=members)  # noqa: S202 (each member checked above)
