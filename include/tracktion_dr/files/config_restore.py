"""Configuration recovery: restore beside, validate, swap; the same path rolls back.

The seed deleted ``/app/config`` and copied the backup over it, validated afterwards, and
"rolled back" from a safety archive it had just written with ``set -e`` active. Here:

1. a **safety snapshot** of the live configuration (and environment file) is written first;
2. the chosen snapshot is extracted **beside** each configuration folder
   (``.<name>.restore-<incident>``), the plan's file modes (and owner) are applied;
3. every JSON and YAML file is parsed and every mode/owner checked **there**: a bad
   snapshot is refused before the live configuration is touched;
4. the live folder is **moved aside** (``<name>.before-<incident>``, never deleted) and the
   restored one renamed into its place (same filesystem: two renames);
5. environment variables from the snapshot are restored only for the plan's allowed
   prefixes, into the plan's environment file (0600); their values are never logged or
   returned.

Rolling back is step 2-5 again with the safety snapshot.
"""

from __future__ import annotations

import fnmatch
import grp
import json
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tracktion_dr.backups.snapshots import SAFETY_FOLDER, config_snapshot, read_environment_file
from tracktion_dr.errors import ValidationFailed
from tracktion_dr.files.snapshots import extract_snapshot, read_environment, utc_stamp
from tracktion_dr.plan import Environment

log = logging.getLogger(__name__)


class ConfigInvalid(ValidationFailed):
    """Restored configuration failed validation; ``problems`` lists each file and why."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} configuration problem(s): " + "; ".join(problems))


@dataclass
class RestoreResult:
    snapshot: str
    swapped: dict[str, str] = field(default_factory=dict)  # live path -> moved-aside path
    missing_in_snapshot: list[str] = field(default_factory=list)
    environment_restored: int = 0
    environment_refused: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _owner_ids(owner: str) -> tuple[int, int]:
    user, _, group = owner.partition(":")
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


def mode_for(name: str, modes: dict[str, str]) -> int | None:
    for pattern, mode in modes.items():
        if fnmatch.fnmatch(name, pattern):
            return int(mode, 8)
    return None


def apply_permissions(root: Path, modes: dict[str, str], owner: str | None) -> None:
    ids = _owner_ids(owner) if owner else None
    for path in [root, *root.rglob("*")]:
        if ids and not path.is_symlink():
            os.chown(path, *ids)
        if path.is_file():
            mode = mode_for(path.name, modes)
            if mode is not None:
                path.chmod(mode)


def validate_tree(root: Path, modes: dict[str, str], owner: str | None) -> list[str]:
    """Every problem under ``root``: unparsable JSON/YAML, wrong mode, wrong owner."""
    problems: list[str] = []
    ids = _owner_ids(owner) if owner else None
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root.parent)
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix in (".yaml", ".yml"):
                yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"{relative}: invalid {path.suffix[1:].upper()}: {first}")
        info = path.stat()
        expected = mode_for(path.name, modes)
        if expected is not None and stat.S_IMODE(info.st_mode) != expected:
            problems.append(
                f"{relative}: mode {stat.S_IMODE(info.st_mode):04o}, expected {expected:04o}"
            )
        if ids and (info.st_uid, info.st_gid) != ids:
            problems.append(f"{relative}: owner {info.st_uid}:{info.st_gid}, expected {owner}")
    return problems


def _aside_name(path: Path, tag: str) -> Path:
    candidate = path.with_name(f"{path.name}.before-{tag}")
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.name}.before-{tag}.{counter}")
    return candidate


def take_safety_snapshot(environment: Environment, backups_dir: Path, incident_id: str) -> Path:
    """The live configuration and the whole environment file (a rollback must put back
    exactly what was there), in the snapshot format, under ``safety/``."""
    env_values: dict[str, str] = {}
    if environment.config_env_file and Path(environment.config_env_file).is_file():
        env_values = read_environment_file(Path(environment.config_env_file))
    return config_snapshot(
        environment.config_paths,
        backups_dir / SAFETY_FOLDER,
        name=f"config_safety_{utc_stamp()}_{incident_id}.tar.gz",
        environment=env_values,
    )


def stage(
    environment: Environment, archive: Path, tag: str, work_parent: Path | None = None
) -> tuple[Path, dict[str, Path], list[str]]:
    """Extract ``archive`` beside the config folders, apply modes/owner, validate.

    Returns (extraction folder, live path -> staged path, config paths absent from the
    snapshot). Raises ConfigInvalid (nothing swapped) when validation fails."""
    paths = [Path(p) for p in environment.config_paths]
    if not paths:
        raise ConfigInvalid(["the plan's environment has no config_paths"])
    # Beside the live folders (same filesystem: the swap is a rename), unless a dry run
    # asks for somewhere else.
    work = (work_parent or paths[0].parent) / f".config-restore-{tag}"
    if work.exists():  # a cleared and re-run task: start again from the archive
        shutil.rmtree(work)
    extract_snapshot(archive, work)
    staged: dict[Path, Path] = {}
    missing = []
    for live in paths:
        candidate = work / live.name
        if candidate.is_dir():
            # a dry run (work_parent given) sets modes on its scratch copy, no ownership
            owner = environment.config_owner if work_parent is None else None
            apply_permissions(candidate, environment.config_file_modes, owner)
            staged[live] = candidate
        else:
            missing.append(str(live))
    if not staged:
        raise ConfigInvalid([f"{archive.name} holds none of {[p.name for p in paths]}"])
    problems = [
        problem
        for candidate in staged.values()
        for problem in validate_tree(
            candidate, environment.config_file_modes, environment.config_owner
        )
    ]
    if problems:
        raise ConfigInvalid(problems)
    return work, staged, missing


def swap_in(staged: dict[Path, Path], tag: str) -> dict[str, str]:
    """Move each live folder aside and rename the staged one into place."""
    swapped: dict[str, str] = {}
    for live, candidate in staged.items():
        aside = ""
        if live.exists():
            aside_path = _aside_name(live, tag)
            live.rename(aside_path)
            aside = str(aside_path)
        candidate.rename(live)
        swapped[str(live)] = aside
        log.info("%s restored (previous version moved aside to %s)", live, aside or "nothing")
    return swapped


def restore_environment(
    environment: Environment, values: dict[str, str], tag: str
) -> tuple[int, int]:
    """Write the allowed variables to the plan's environment file; (restored, refused).
    Values never reach a log line or a return value."""
    if not values or not environment.config_env_file:
        return 0, len(values)
    allowed = {
        k: v
        for k, v in values.items()
        if any(k.startswith(p) for p in environment.config_env_prefixes)
    }
    target = Path(environment.config_env_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.copy2(target, _aside_name(target, tag))
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(f"{k}={v}\n" for k, v in sorted(allowed.items())))
    os.replace(tmp, target)
    return len(allowed), len(values) - len(allowed)


def restore(environment: Environment, archive: Path, tag: str) -> RestoreResult:
    """Stage, validate, then swap in ``archive`` (a snapshot or a safety snapshot)."""
    result = RestoreResult(snapshot=archive.name)
    work, staged, result.missing_in_snapshot = stage(environment, archive, tag)
    try:
        result.swapped = swap_in(staged, tag)
        env_values = read_environment(work)
        result.environment_restored, result.environment_refused = restore_environment(
            environment, env_values, tag
        )
        if env_values:
            log.info(
                "environment: %d variable(s) restored to %s, %d refused (not an allowed "
                "prefix %s); values not shown",
                result.environment_restored,
                environment.config_env_file,
                result.environment_refused,
                environment.config_env_prefixes,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only the extraction leftovers
    return result


def validate_live(environment: Environment) -> list[str]:
    return [
        problem
        for path in environment.config_paths
        if Path(path).is_dir()
        for problem in validate_tree(
            Path(path), environment.config_file_modes, environment.config_owner
        )
    ] + [f"{p}: missing" for p in environment.config_paths if not Path(p).is_dir()]


def tree_digest(paths: Iterable[str]) -> dict[str, str]:
    """relative file -> content+mode, for before/after comparisons."""
    from tracktion_dr.files.snapshots import sha256_file

    digest = {}
    for root in map(Path, paths):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest[str(path.relative_to(root.parent))] = (
                f"{sha256_file(path)}:{stat.S_IMODE(path.stat().st_mode):04o}"
            )
    return digest
