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

Rolling back (:func:`roll_back`) is not a restore of a snapshot: it puts back *exactly*
what was there before the run. The safety snapshot records every configuration path's
type, bytes, mode and owner, and the environment file's bytes, mode and owner, or that it
did not exist (:func:`configuration_state`). The rollback extracts it beside, re-creates
that state there (no parsing or plan modes: a broken file that was live goes back
broken), checks it against the record, swaps it in by renames (what is live moves aside,
never deleted; an environment file that did not exist is moved aside), and checks the
live result against the record again. Whether a rollback is needed at all is decided by
comparing the live state with the record (:func:`differences_from_safety`), not by what
an earlier task said it did.
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
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tracktion_dr.backups.snapshots import (
    ENVIRONMENT_FILE_MEMBER,
    SAFETY_FOLDER,
    SAFETY_STATE_MEMBER,
    config_snapshot,
)
from tracktion_dr.core.errors import StepFailed, ValidationFailed
from tracktion_dr.core.plan import Environment
from tracktion_dr.files.snapshots import (
    extract_snapshot,
    read_environment,
    sha256_file,
    utc_stamp,
)

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
    # a rollback's environment file: "restored", "moved aside (absent before)", "unchanged"
    environment_file: str = ""

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
    """The live configuration exactly as it is, under ``safety/``: the configuration
    folders' files, the record of every path's state, and the environment file's bytes
    (or the fact that there is none), so a rollback can put back exactly what was there."""
    paths = [Path(p) for p in environment.config_paths]
    env_file = Path(environment.config_env_file) if environment.config_env_file else None
    before = configuration_state(paths, env_file)
    members = {SAFETY_STATE_MEMBER: json.dumps(before, sort_keys=True).encode()}
    if env_file is not None and before["environment_file"]["type"] == "file":
        members[ENVIRONMENT_FILE_MEMBER] = env_file.read_bytes()
    present = [
        str(p)
        for p in paths
        if before["entries"].get(str(p), {}).get("type") not in (None, "absent")
    ]
    archive = config_snapshot(
        present,
        backups_dir / SAFETY_FOLDER,
        name=f"config_safety_{utc_stamp()}_{incident_id}.tar.gz",
        exact_members=members,
    )
    changed = differences(before, configuration_state(paths, env_file))
    if changed:
        raise StepFailed(
            f"the configuration changed while the safety snapshot {archive.name} was taken "
            f"({'; '.join(changed)}); nothing was restored",
            hint="find what is writing the configuration, then run again",
        )
    return archive


# --- the exact state of the configuration ------------------------------------------------


def describe(path: Path) -> dict[str, Any]:
    """One path's state: type, mode, owner; a file's checksum, a symlink's target."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {"type": "absent"}
    entry: dict[str, Any] = {"uid": info.st_uid, "gid": info.st_gid}
    if stat.S_ISLNK(info.st_mode):
        entry.update(type="symlink", target=os.readlink(path))
    elif stat.S_ISDIR(info.st_mode):
        entry.update(type="dir", mode=stat.S_IMODE(info.st_mode))
    elif stat.S_ISREG(info.st_mode):
        entry.update(
            type="file",
            mode=stat.S_IMODE(info.st_mode),
            size=info.st_size,
            sha256=sha256_file(path),
        )
    else:
        entry.update(type="other")
    return entry


def _below(root: Path) -> list[Path]:
    """Every path under ``root``, parents first; symlinked folders are not followed."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        found += [Path(folder) / name for name in sorted(dirs + files)]
    return sorted(found)


def configuration_state(config_paths: Iterable[Path], env_file: Path | None) -> dict[str, Any]:
    """The configuration folders (every path under them) and the environment file, as a
    JSON-able record: what a rollback must reproduce and what it is checked against."""
    entries: dict[str, dict[str, Any]] = {}
    for root in config_paths:
        entries[str(root)] = describe(root)
        if entries[str(root)]["type"] == "dir":
            entries.update({str(path): describe(path) for path in _below(root)})
    for path in [p for p, entry in entries.items() if entry["type"] == "other"]:
        # a socket or fifo is not configuration: neither archived nor put back
        log.warning("%s is neither a file, a folder nor a symlink: not recorded", path)
        del entries[path]
    return {
        "format": 1,
        "config_paths": [str(p) for p in config_paths],
        "entries": entries,
        "environment_file": {
            "path": str(env_file) if env_file else None,
            **(describe(env_file) if env_file else {"type": "absent"}),
        },
    }


def _render(entry: dict[str, Any], *, checksum: bool = True) -> str:
    """An entry as one comparable line; a checksum, never content (and for the
    environment file, whose content is secret, not even that in a message)."""
    kind = entry["type"]
    if kind == "absent":
        return "absent"
    owner = f"owner {entry['uid']}:{entry['gid']}"
    if kind == "symlink":
        return f"symlink to {entry['target']}, {owner}"
    text = f"{kind}, mode {entry['mode']:04o}, {owner}"
    if kind == "file":
        text += f", sha256 {entry['sha256']}" if checksum else f", {entry['size']} bytes"
    return text


def state_digest(state: dict[str, Any]) -> dict[str, str]:
    """path -> type, mode, owner and checksum, for every configuration path and the
    environment file: equal digests mean byte-, mode- and owner-identical."""
    digest = {path: _render(entry) for path, entry in state["entries"].items()}
    env = state["environment_file"]
    if env["path"]:
        digest[env["path"]] = _render(env)
    return digest


def configuration_digest(environment: Environment) -> dict[str, str]:
    """The live configuration and environment file of ``environment``, as a digest."""
    return state_digest(
        configuration_state(
            [Path(p) for p in environment.config_paths],
            Path(environment.config_env_file) if environment.config_env_file else None,
        )
    )


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Each path whose state differs, and how (no content, no values)."""
    want, have = state_digest(expected), state_digest(actual)
    found = []
    for path in sorted(set(want) | set(have)):
        if want.get(path, "absent") == have.get(path, "absent"):
            continue
        if path == expected["environment_file"]["path"]:
            now = _render(actual["environment_file"], checksum=False)
            was = _render(expected["environment_file"], checksum=False)
            if now == was:
                now, was = "other content", "the recorded content"
            found.append(f"{path}: {now}, was {was}")
        else:
            found.append(f"{path}: {have.get(path, 'absent')}, was {want.get(path, 'absent')}")
    return found


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
    try:
        staged, missing = _extract_and_check(environment, archive, work, paths, work_parent)
    except BaseException:
        # our own extraction of a refused snapshot: nothing in it to keep (the archive is)
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work, staged, missing


def _extract_and_check(
    environment: Environment,
    archive: Path,
    work: Path,
    paths: list[Path],
    work_parent: Path | None,
) -> tuple[dict[Path, Path], list[str]]:
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
    return staged, missing


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


# --- rollback: the safety snapshot, exactly -----------------------------------------------


def read_safety_state(archive: Path) -> dict[str, Any] | None:
    """The exact record a safety snapshot carries (None for an older one without it)."""
    try:
        with tarfile.open(archive, "r:gz") as opened:
            handle = opened.extractfile(SAFETY_STATE_MEMBER)
            return json.loads(handle.read()) if handle else None
    except KeyError:
        return None
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise StepFailed(f"{archive.name}: cannot read its {SAFETY_STATE_MEMBER}: {exc}") from None


def differences_from_safety(environment: Environment, archive: Path) -> list[str] | None:
    """How the live configuration differs from what the safety snapshot recorded ([] when
    identical; None when the snapshot has no record to compare with)."""
    recorded = read_safety_state(archive)
    if recorded is None:
        return None
    return differences(recorded, _live_state(environment, recorded))


def _live_state(environment: Environment, recorded: dict[str, Any]) -> dict[str, Any]:
    env_file = recorded["environment_file"]["path"] or environment.config_env_file
    return configuration_state(
        [Path(p) for p in recorded["config_paths"]], Path(env_file) if env_file else None
    )


def _set_exact(path: Path, entry: dict[str, Any]) -> None:
    """Owner and mode as recorded (a symlink's owner only: its mode means nothing)."""
    info = path.lstat()
    if (info.st_uid, info.st_gid) != (entry["uid"], entry["gid"]):
        try:
            os.lchown(path, entry["uid"], entry["gid"])
        except PermissionError:
            raise StepFailed(
                f"{path}: cannot give it back its owner {entry['uid']}:{entry['gid']}",
                hint="run the rollback as a user allowed to change owners (root)",
            ) from None
    if entry["type"] != "symlink":
        path.chmod(entry["mode"])


def _rebuild(staged_root: Path, live_root: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Make ``staged_root`` (the extracted files of ``live_root``) what the record says:
    empty folders and symlinks (not archived) re-created, every mode and owner set."""
    mine = {
        Path(path): entry
        for path, entry in entries.items()
        if Path(path) == live_root or live_root in Path(path).parents
    }
    for live, entry in sorted(mine.items()):
        staged = staged_root / live.relative_to(live_root)
        if entry["type"] == "dir":
            staged.mkdir(parents=True, exist_ok=True)
        elif entry["type"] == "symlink" and not staged.is_symlink():
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.symlink_to(entry["target"])
    # children before their folders: a folder's own mode may forbid writing into it
    for live, entry in sorted(mine.items(), reverse=True):
        staged = staged_root / live.relative_to(live_root)
        if staged.exists() or staged.is_symlink():
            _set_exact(staged, entry)


def _stage_environment_file(
    opened: tarfile.TarFile, recorded: dict[str, Any], tag: str
) -> Path | None:
    """The recorded environment file beside the live one (``.<name>.rollback-<tag>``),
    with its bytes, mode and owner; None when the record says there was none."""
    if recorded["type"] not in ("file", "symlink"):
        return None
    live = Path(recorded["path"])
    staged = live.with_name(f".{live.name}.rollback-{tag}")
    if staged.exists() or staged.is_symlink():
        staged.unlink()  # our own leftover from a killed run: rebuilt from the snapshot
    live.parent.mkdir(parents=True, exist_ok=True)
    if recorded["type"] == "symlink":
        staged.symlink_to(recorded["target"])
    else:
        handle = opened.extractfile(ENVIRONMENT_FILE_MEMBER)
        if handle is None:
            raise StepFailed(f"the safety snapshot lacks its {ENVIRONMENT_FILE_MEMBER} member")
        # 0600 from the first byte (it holds secrets); the recorded mode is set after
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, handle:
            shutil.copyfileobj(handle, out)
            out.flush()
            os.fsync(out.fileno())
    _set_exact(staged, recorded)
    if recorded["type"] == "file" and sha256_file(staged) != recorded["sha256"]:
        raise StepFailed(f"{live}: the safety snapshot's copy does not match its record")
    return staged


def _move_aside(live: Path, tag: str) -> str:
    if not (live.exists() or live.is_symlink()):
        return ""
    aside = _aside_name(live, tag)
    live.rename(aside)
    return str(aside)


def roll_back(environment: Environment, archive: Path, tag: str) -> RestoreResult:
    """Put back exactly what the safety snapshot ``archive`` recorded: every configuration
    path and the environment file, byte for byte, with their modes and owners, or their
    absence. What is live is moved aside (``.before-<tag>``), never deleted.

    Beside, then checked, then swapped, then checked live: raises ValidationFailed naming
    each path when the result is not what was recorded. A snapshot without a record (taken
    before this format) is restored like any snapshot, with a warning."""
    recorded = read_safety_state(archive)
    if recorded is None:
        log.warning("%s has no exact record; restoring it like a snapshot", archive.name)
        return restore(environment, archive, tag)
    result = RestoreResult(snapshot=archive.name)
    roots = [Path(p) for p in recorded["config_paths"]]
    work = (roots[0].parent if roots else Path(recorded["environment_file"]["path"]).parent) / (
        f".config-rollback-{tag}"
    )
    if work.exists():  # a cleared and re-run task: start again from the archive
        shutil.rmtree(work)
    extract_snapshot(archive, work)
    staged_env: Path | None = None
    try:
        staged: dict[Path, Path | None] = {}
        for root in roots:
            kind = recorded["entries"].get(str(root), {"type": "absent"})["type"]
            if kind == "absent":
                staged[root] = None
                continue
            if kind == "symlink":  # the link itself goes back, not a copy of its target
                staged[root] = work / f"{root.name}.link"
                staged[root].symlink_to(recorded["entries"][str(root)]["target"])
                _set_exact(staged[root], recorded["entries"][str(root)])
                continue
            staged[root] = work / root.name
            _rebuild(staged[root], root, recorded["entries"])
        env_record = recorded["environment_file"]
        if env_record["path"]:
            with tarfile.open(archive, "r:gz") as opened:
                staged_env = _stage_environment_file(opened, env_record, tag)
        # checked beside, before anything live moves
        problems = [
            problem
            for root, copy in staged.items()
            if copy is not None
            for problem in _staged_problems(root, copy, recorded)
        ]
        if problems:
            raise ValidationFailed(
                f"{archive.name} does not rebuild what it recorded, nothing swapped: "
                + "; ".join(problems)
            )
        for root, copy in staged.items():
            aside = _move_aside(root, tag)
            if copy is not None:
                copy.rename(root)
            result.swapped[str(root)] = aside
            log.info("%s rolled back (what was live moved aside to %s)", root, aside or "nothing")
        if env_record["path"]:
            result.environment_file = _swap_environment_file(env_record, staged_env, tag)
            staged_env = None
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only the extraction leftovers
        if staged_env is not None and (staged_env.exists() or staged_env.is_symlink()):
            staged_env.unlink()  # our own unswapped copy of the snapshot's file
    left = differences(recorded, _live_state(environment, recorded))
    if left:
        raise StepFailed(
            f"rolled back to {archive.name}, but the live state differs from its record: "
            + "; ".join(left)
        )
    return result


def _staged_problems(root: Path, copy: Path, recorded: dict[str, Any]) -> list[str]:
    """The record's entries for ``root`` against the staged copy (paths shown as live)."""
    mine = {
        path: entry
        for path, entry in recorded["entries"].items()
        if Path(path) == root or root in Path(path).parents
    }
    staged_state = configuration_state([copy], None)["entries"]
    rebased = {str(root / Path(p).relative_to(copy)): e for p, e in staged_state.items()}
    want = {p: _render(e) for p, e in mine.items()}
    have = {p: _render(e) for p, e in rebased.items()}
    return [
        f"{path}: {have.get(path, 'absent')}, recorded {want.get(path, 'absent')}"
        for path in sorted(set(want) | set(have))
        if want.get(path, "absent") != have.get(path, "absent")
    ]


def _swap_environment_file(recorded: dict[str, Any], staged: Path | None, tag: str) -> str:
    live = Path(recorded["path"])
    if staged is None:  # there was none before the run
        aside = _move_aside(live, tag)
        if aside:
            log.info("%s did not exist before the run: moved aside to %s", live, aside)
            return "moved aside (absent before)"
        return "unchanged (absent before and now)"
    aside = _move_aside(live, tag)
    staged.rename(live)
    log.info("%s rolled back (what was live moved aside to %s)", live, aside or "nothing")
    return "restored"


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
    digest = {}
    for root in map(Path, paths):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest[str(path.relative_to(root.parent))] = (
                f"{sha256_file(path)}:{stat.S_IMODE(path.stat().st_mode):04o}"
            )
    return digest
