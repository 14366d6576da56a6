"""The backups catalog: one trustworthy place to find "the newest good backup before T".

It lists what the plan's backup locations hold — logical dumps, base backups, the WAL
archive, configuration and file-storage snapshots — with each entry's kind, times, LSN
range, size, checksum and verification status. Verification outcomes are kept beside each
backup (``<name>.verification.json``) so every reader sees the same verdict.

Picking never trusts a stale verdict: the candidate is checked again right before it is
returned, and a backup that fails is recorded as failed (with the reason) and skipped.

Locations are ``file://`` or ``s3://`` (the offsite copy's layout, ``backups/offsite.py``).
An ``s3://`` location is read through its local mirror (``backups/s3_objects.py``): listing
downloads only the small sidecars (manifests, ``backup_info.json``), a backup itself comes
down - sha256 verified against what the offsite copy recorded - when it is verified for
use, and the WAL archive is mirrored whole (the guards read it with ``pg_waldump``). Entries
then carry their mirror path, so every reader downstream works on local files. Verdicts
about an offsite backup are recorded in the mirror, beside the downloaded copy: they are
about the bytes this host received (the origin's own ``.verification.json`` is not used).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracktion_dr.backups import s3_objects
from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, ValidationFailed
from tracktion_dr.core.plan import BackupLocations
from tracktion_dr.core.safe_tar import extract_as_data
from tracktion_dr.postgres import basebackup_format, basebackups, dumps, wal
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, CommandError

if TYPE_CHECKING:
    from tracktion_dr.postgres.pitr import RecoverableWindow, RecoveryTarget
    from tracktion_dr.postgres.salvage import WalHoldings

log = logging.getLogger(__name__)

VERIFICATION_SUFFIX = ".verification.json"
SNAPSHOT_MANIFEST_SUFFIX = ".manifest.json"
SYNC_FOLDER = "sync"  # the storage sync's mirror, see backups/snapshots.py
SAFETY_FOLDER = "safety"  # dr_config_recovery's safety snapshots, see backups/snapshots.py
OFFSITE_CACHE_ENV = "DR_OFFSITE_CACHE"
DEFAULT_OFFSITE_CACHE = Path("/var/lib/tracktion-dr/offsite-cache")
OFFSITE_CACHE_NAME = "offsite-cache"
BASE_TAR_SUFFIX = ".tar"  # a base backup folder travels offsite as one tar (offsite.py)
LOCATION_NAMES = ("logical", "base", "wal_archive", "configuration", "storage")


class BackupKind(enum.StrEnum):
    LOGICAL_DUMP = "logical_dump"
    BASE_BACKUP = "base_backup"
    CONFIG_SNAPSHOT = "config_snapshot"
    STORAGE_SNAPSHOT = "storage_snapshot"


class Status(enum.StrEnum):
    VERIFIED = "verified"
    FAILED = "failed"
    UNVERIFIED = "unverified"


@dataclass(frozen=True)
class BackupEntry:
    id: str
    kind: BackupKind
    path: Path
    finished_at: datetime
    size_bytes: int
    status: Status
    reason: str = ""
    started_at: datetime | None = None
    database: str | None = None
    sha256: str | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    timeline: int | None = None
    format: str | None = None  # base backups: "plain" (a data directory) or "tar" (compressed)
    compression: str | None = None  # base backups: the pg_basebackup compression, or "none"
    plain_bytes: int | None = None  # base backups: the size once laid down

    @property
    def location(self) -> str:
        return self.path.as_uri()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            kind=str(self.kind),
            status=str(self.status),
            path=str(self.path),
            location=self.location,
        )
        for key in ("finished_at", "started_at"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


def local_path(location: str) -> Path:
    """The folder of a file:// location: where backups are written, rotated and watched.
    (An s3:// location is only read, through ``Catalog.folder`` / its mirror.)"""
    if not location.startswith("file://"):
        raise ValueError(
            f"{location}: backups are written, rotated and watched only in file:// "
            "locations; an s3:// location is read through the catalog (restore from offsite)"
        )
    return Path(location.removeprefix("file://"))


def default_offsite_cache() -> Path:
    """Where s3:// locations are mirrored when the caller names no place: ``$DR_OFFSITE_CACHE``
    or /var/lib/tracktion-dr/offsite-cache."""
    return Path(os.environ.get(OFFSITE_CACHE_ENV) or DEFAULT_OFFSITE_CACHE)


def offsite_cache_beside(data_directory: Path | str) -> Path:
    """The mirror of s3:// backups for a restore into ``data_directory``: next to it, on
    the filesystem the restore lands on (``<parent>/offsite-cache``)."""
    return Path(data_directory).parent / OFFSITE_CACHE_NAME


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_verification(target: Path, status: Status, reason: str, check: str) -> None:
    dumps.write_json_atomic(
        target.with_name(target.name + VERIFICATION_SUFFIX),
        {
            "status": str(status),
            "reason": reason,
            "check": check,
            "checked_at": datetime.now(UTC).isoformat(),
        },
    )


def _recorded_status(target: Path) -> tuple[Status, str]:
    record = _read_json(target.with_name(target.name + VERIFICATION_SUFFIX))
    if not record:
        return Status.UNVERIFIED, "never verified"
    return Status(record["status"]), str(record.get("reason", ""))


class Catalog:
    """Backups of one environment, from its plan's backup locations."""

    def __init__(
        self,
        locations: BackupLocations,
        *,
        bindir: Path = DEFAULT_BINDIR,
        os_user: str = "postgres",
        cache_dir: Path | None = None,
        s3_client: Any = None,
    ):
        self.locations = locations
        self.bindir = bindir
        self.os_user = os_user
        self.cache_dir = cache_dir or default_offsite_cache()
        self._s3_client = s3_client  # tests may pass one; else S3Hook on offsite_conn_id
        self._mirrors: dict[str, s3_objects.S3Mirror] = {}
        # s3:// WAL objects gone or failing verification: relative name -> why.
        self.unusable_wal: dict[str, str] = {}

    # -- s3:// locations ------------------------------------------------------------

    def check_locations(self) -> None:
        """Refuse, before anything is touched, an s3:// location without a bucket or an
        unknown connection (``InvalidInput`` naming the field)."""
        for name in LOCATION_NAMES:
            self.mirror(name)

    def mirror(self, name: str) -> s3_objects.S3Mirror | None:
        """The mirror of location ``name`` (``logical``, ``base``...), None for file://."""
        location = getattr(self.locations, name)
        if not s3_objects.is_s3(location):
            return None
        if name not in self._mirrors:
            s3_objects.parse_location(location, f"backups.{name}")
            if self._s3_client is None:
                self._s3_client = s3_objects.client_for(self.locations.offsite_conn_id)
            self._mirrors[name] = s3_objects.S3Mirror(
                self._s3_client,
                location,
                self.cache_dir,
                field=f"backups.{name}",
                os_user=self.os_user,
            )
        return self._mirrors[name]

    def folder(self, name: str) -> Path:
        """The local folder of location ``name``: itself (file://) or its mirror (s3://)."""
        mirror = self.mirror(name)
        return mirror.local if mirror else local_path(getattr(self.locations, name))

    def wal_archive_dir(self) -> Path:
        """The WAL archive as a local folder; an s3:// archive is mirrored first (every
        segment and timeline history, each sha256-verified, none fetched twice).

        An object that is gone or does not verify is left out of the mirror (logged, and
        kept in :attr:`unusable_wal` with the reason): the WAL held then shows the gap,
        so a guard plans replay up to it or refuses a target past it, instead of no
        recovery starting at all."""
        mirror = self.mirror("wal_archive")
        if mirror is None:
            return local_path(self.locations.wal_archive)
        for relative in sorted(mirror.objects()):
            if not _is_wal_file(relative):
                continue
            try:
                mirror.fetch(relative)
            except (s3_objects.MissingObject, s3_objects.ChecksumMismatch) as exc:
                log.warning("WAL object left out of the mirror: %s", exc)
                self.unusable_wal[relative] = str(exc)
        mirror.hand_to_os_user()
        mirror.local.mkdir(parents=True, exist_ok=True)
        return mirror.local

    def describe_unusable_wal(self) -> str:
        """The offsite WAL objects left out of the mirror, for a refusal's hint ("" if none)."""
        if not self.unusable_wal:
            return ""
        # Each reason names its object's s3:// URL.
        return "offsite WAL objects left out of the mirror: " + "; ".join(
            reason for _, reason in sorted(self.unusable_wal.items())
        )

    def _sidecar(self, mirror: s3_objects.S3Mirror, relative: str) -> dict[str, Any] | None:
        """A downloaded, verified JSON sidecar; None when it is missing or does not verify."""
        try:
            return _read_json(mirror.fetch(relative))
        except (s3_objects.MissingObject, s3_objects.ChecksumMismatch) as exc:
            log.warning("%s", exc)
            return None

    def _fetch(self, entry: BackupEntry) -> None:
        """Bring an offsite backup down into its mirror path (verified); no-op for file://."""
        if entry.kind is BackupKind.LOGICAL_DUMP:
            mirror = self.mirror("logical")
            if mirror:
                mirror.fetch(entry.id)
        elif entry.kind is BackupKind.BASE_BACKUP:
            mirror = self.mirror("base")
            if mirror and not entry.path.is_dir():
                _unpack_base_backup(mirror.fetch(entry.id + BASE_TAR_SUFFIX), entry.path)
            elif mirror:  # unpacked already; a kill may have come before the tar was dropped
                mirror.path(entry.id + BASE_TAR_SUFFIX).unlink(missing_ok=True)
        else:
            name = "configuration" if entry.kind is BackupKind.CONFIG_SNAPSHOT else "storage"
            mirror = self.mirror(name)
            if mirror:
                mirror.fetch(entry.id)

    # -- listing --------------------------------------------------------------------

    def dumps(self, database: str | None = None) -> list[BackupEntry]:
        """Logical dumps, newest first. A dump whose size no longer matches its manifest is
        listed as failed at once (truncation needs no checksum to be seen)."""
        mirror = self.mirror("logical")
        folder = self.folder("logical")
        if mirror:
            found = [
                (mirror.path(o.relative), o.size_bytes, o.last_modified)
                for o in mirror.objects().values()
                if "/" not in o.relative
            ]
        else:
            found = (
                [(p, p.stat().st_size, None) for p in folder.glob("*.dump")]
                if folder.is_dir()
                else []
            )
        entries = []
        for path, size, modified in found:
            match = dumps.DUMP_NAME.match(path.name)
            if not match or (database and match.group("db") != database):
                continue
            manifest_name = path.name + dumps.MANIFEST_SUFFIX
            manifest = (
                self._sidecar(mirror, manifest_name)
                if mirror
                else _read_json(path.with_name(manifest_name))
            )
            if manifest is None:
                status, reason = Status.FAILED, "manifest missing or unreadable"
            elif size != manifest.get("size_bytes"):
                status, reason = (
                    Status.FAILED,
                    f"size {size} bytes, manifest says {manifest.get('size_bytes')} (truncated?)",
                )
            else:
                status, reason = _recorded_status(path)
            entries.append(
                BackupEntry(
                    id=path.name,
                    kind=BackupKind.LOGICAL_DUMP,
                    path=path,
                    finished_at=_time((manifest or {}).get("finished_at"))
                    or modified
                    or datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    started_at=_time((manifest or {}).get("started_at")),
                    size_bytes=size,
                    status=status,
                    reason=reason,
                    database=match.group("db"),
                    sha256=(manifest or {}).get("sha256"),
                )
            )
        return sorted(entries, key=lambda e: e.finished_at, reverse=True)

    def base_backups(self) -> list[BackupEntry]:
        mirror = self.mirror("base")
        folder = self.folder("base")
        if mirror:
            # Offsite a base backup is <id>.tar (+ sidecars): listed by its name, laid out
            # as the folder it becomes once verified and unpacked.
            found = [
                (mirror.path(o.relative.removesuffix(BASE_TAR_SUFFIX)), o.last_modified)
                for o in mirror.objects().values()
                if "/" not in o.relative
                and o.relative.endswith(BASE_TAR_SUFFIX)
                and basebackups.BASE_NAME.match(o.relative.removesuffix(BASE_TAR_SUFFIX))
            ]
        else:
            found = [
                (p, None)
                for p in (folder.iterdir() if folder.is_dir() else [])
                if p.is_dir() and basebackups.BASE_NAME.match(p.name)
            ]
        entries = []
        for path, modified in found:
            info_name = path.name + basebackups.INFO_SUFFIX
            info = (
                self._sidecar(mirror, info_name)
                if mirror
                else _read_json(path.with_name(info_name))
            )
            if info is None:
                entries.append(
                    BackupEntry(
                        path.name,
                        BackupKind.BASE_BACKUP,
                        path,
                        modified or datetime.fromtimestamp(path.stat().st_mtime, UTC),
                        0,
                        Status.FAILED,
                        "backup_info.json missing or unreadable",
                    )
                )
                continue
            status, reason = _recorded_status(path)
            entries.append(
                BackupEntry(
                    id=path.name,
                    kind=BackupKind.BASE_BACKUP,
                    path=path,
                    finished_at=_time(info["end_time"]),  # type: ignore[arg-type]
                    started_at=_time(info.get("start_time")),
                    size_bytes=int(info.get("size_bytes", 0)),
                    status=status,
                    reason=reason,
                    start_lsn=info.get("start_lsn"),
                    stop_lsn=info.get("stop_lsn"),
                    timeline=info.get("timeline"),
                    format=info.get("format", basebackup_format.PLAIN),
                    compression=info.get("compression", "none"),
                    plain_bytes=info.get("plain_bytes", info.get("size_bytes")),
                )
            )
        return sorted(entries, key=lambda e: e.finished_at, reverse=True)

    def snapshots(self, kind: BackupKind) -> list[BackupEntry]:
        """Configuration or file-storage snapshots (``*.tar.gz`` with a manifest)."""
        name = "configuration" if kind is BackupKind.CONFIG_SNAPSHOT else "storage"
        mirror = self.mirror(name)
        folder = self.folder(name)
        if mirror:
            found = [
                (mirror.path(o.relative), o.size_bytes, o.last_modified)
                for o in mirror.objects().values()
                if o.relative.endswith(".tar.gz")
            ]
        else:
            found = [
                (p, p.stat().st_size, None)
                for p in (folder.rglob("*.tar.gz") if folder.is_dir() else [])
            ]
        entries = []
        for path, size, modified in found:
            # The storage sync's mirror (``sync/``) holds the users' own files, which may
            # be .tar.gz uploads: they are not snapshots. Neither are unfinished ones, nor
            # dr_config_recovery's safety snapshots (``safety/``: kept, never rotated).
            top = path.relative_to(folder).parts[0]
            if top in (SYNC_FOLDER, SAFETY_FOLDER) or path.name.startswith("."):
                continue
            relative = path.relative_to(folder).as_posix()
            manifest = (
                self._sidecar(mirror, relative + SNAPSHOT_MANIFEST_SUFFIX)
                if mirror
                else _read_json(path.with_name(path.name + SNAPSHOT_MANIFEST_SUFFIX))
            ) or {}
            if not manifest:
                status, reason = Status.UNVERIFIED, "no manifest"
            elif manifest.get("size_bytes") not in (None, size):
                status, reason = (
                    Status.FAILED,
                    f"size {size} bytes, manifest says {manifest['size_bytes']}",
                )
            else:
                status, reason = _recorded_status(path)
            entries.append(
                BackupEntry(
                    id=str(path.relative_to(folder)),
                    kind=kind,
                    path=path,
                    finished_at=_time(manifest.get("finished_at"))
                    or modified
                    or datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    size_bytes=size,
                    status=status,
                    reason=reason,
                    sha256=manifest.get("sha256"),
                )
            )
        return sorted(entries, key=lambda e: e.finished_at, reverse=True)

    def wal_archive(self, since: wal.Segment | None = None) -> wal.ArchiveState:
        return wal.archive_state(self.wal_archive_dir(), since)

    def newest_restorable_point(self) -> datetime | None:
        return wal.newest_restorable_point(self.wal_archive_dir(), self.bindir)

    # -- verification -----------------------------------------------------------------

    def verify(
        self, entry: BackupEntry, *, restore_into: Any = None, full: bool = False
    ) -> BackupEntry:
        """Check an entry now and record the outcome beside it.

        Dumps: size + sha256 against the manifest and a readable table of contents; with
        ``restore_into`` (an Endpoint), also a real restore into a scratch database with the
        row counts compared. Base backups: plain ones ``pg_verifybackup`` where they lie;
        compressed ones the sha256 of every archive against the ones recorded when taken
        (cheap: what picking a backup for a recovery needs, since laying it down verifies
        it again with ``pg_verifybackup``), and with ``full`` also extracted into a scratch
        directory and ``pg_verifybackup``-ed there (``dr_backup_verify``). Snapshots: sha256.

        An offsite entry is downloaded first (sha256 checked while it streams in); a
        mismatch or a vanished object records it as failed, naming the object.
        """
        try:
            self._fetch(entry)
        except (ValidationFailed, tarfile.TarError) as exc:
            # a mismatch, a vanished object, or an archive that does not unpack: the same
            # backup must not be picked again by every re-run
            record_verification(entry.path, Status.FAILED, str(exc), "download + sha256")
            log.error("%s %s: %s", entry.kind, entry.id, exc)
            return replace(entry, status=Status.FAILED, reason=str(exc))
        if entry.kind is BackupKind.LOGICAL_DUMP:
            result = dumps.check_dump(entry.path, self.bindir)
            check = "sha256 + pg_restore --list"
            if result.ok and restore_into is not None:
                result = dumps.verify_by_restore(restore_into, entry.path, bindir=self.bindir)
                check += " + test restore"
            status, reason = (Status.VERIFIED if result.ok else Status.FAILED), result.reason
        elif entry.kind is BackupKind.BASE_BACKUP:
            check, status, reason = self._verify_base_backup(entry, full=full)
        else:
            check = "sha256"
            digest = dumps.sha256_file(entry.path)
            if entry.sha256 is None:
                status, reason = Status.FAILED, "no checksum in the manifest"
            elif digest != entry.sha256:
                status, reason = (
                    Status.FAILED,
                    f"sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}…",
                )
            else:
                status, reason = Status.VERIFIED, "sha256 matches the manifest"
        record_verification(entry.path, status, reason, check)
        log.info("%s %s: %s (%s)", entry.kind, entry.id, status, reason)
        return replace(entry, status=status, reason=reason)

    def _verify_base_backup(self, entry: BackupEntry, *, full: bool) -> tuple[str, Status, str]:
        """(check made, status, reason) for a base backup of either format."""
        compressed = basebackup_format.backup_format(entry.path) != basebackup_format.PLAIN
        check = base_backup_check(compressed, full=full)
        try:
            if compressed:
                info = _read_json(entry.path.with_name(entry.path.name + basebackups.INFO_SUFFIX))
                reason = basebackup_format.check_archives(entry.path, (info or {}).get("archives"))
                if full:
                    reason += "; " + basebackup_format.verify_fully(
                        entry.path, bindir=self.bindir, os_user=self.os_user
                    )
            else:
                reason = basebackups.verify_base_backup(
                    entry.path, bindir=self.bindir, os_user=self.os_user
                )
        except (CommandError, ValidationFailed) as exc:
            return check, Status.FAILED, str(exc)
        return check, Status.VERIFIED, reason

    # -- picking ----------------------------------------------------------------------

    def newest_dump(
        self, database: str, *, before: datetime | None = None, backup_id: str = "latest"
    ) -> BackupEntry:
        """The newest dump of ``database`` (finished before ``before``) that verifies now."""
        rejected: list[str] = []
        for entry in self.dumps(database):
            if backup_id != "latest" and entry.id != backup_id:
                continue
            if before and entry.finished_at > before:
                rejected.append(f"{entry.id}: finished after {before.isoformat()}")
                continue
            if entry.status is Status.FAILED:
                rejected.append(f"{entry.id}: {entry.reason}")
                continue
            checked = self.verify(entry)
            if checked.status is Status.VERIFIED:
                return checked
            rejected.append(f"{entry.id}: {checked.reason}")
        wanted = "any dump" if backup_id == "latest" else f"dump {backup_id!r}"
        raise NoUsableBackup(
            f"no usable {wanted} of {database} in {self.locations.logical}"
            + (": " + "; ".join(rejected) if rejected else " (none found)")
        )

    def base_backup_for(self, target: datetime | None) -> tuple[BackupEntry, wal.ArchiveState]:
        """The newest base backup that verifies now, finished before ``target`` (None =
        latest), with a continuous WAL archive from its start; and that archive state."""
        rejected: list[str] = []
        for entry in self.base_backups():
            if target and entry.finished_at > target:
                rejected.append(
                    f"{entry.id}: finished {entry.finished_at.isoformat()}, after the target"
                )
                continue
            if entry.status is Status.FAILED:
                rejected.append(f"{entry.id}: {entry.reason}")
                continue
            archive = self.wal_archive(
                since=wal.Segment.from_lsn(entry.start_lsn or "0/0", entry.timeline or 1)
            )
            if not archive.continuous:
                rejected.append(
                    f"{entry.id}: WAL archive has a gap, missing {', '.join(archive.missing[:5])}"
                )
                continue
            checked = self.verify(entry)
            if checked.status is Status.VERIFIED:
                return checked, archive
            rejected.append(f"{entry.id}: {checked.reason}")
        raise NoUsableBackup(
            "no usable base backup"
            + (f" before {target.isoformat()}" if target else "")
            + f" in {self.locations.base}"
            + (": " + "; ".join(rejected) if rejected else " (none found)")
        )

    def why_no_window(self) -> str:
        """Why ``recoverable_window`` is None, per base backup, for the guard's message."""
        if self.newest_restorable_point() is None:
            return f"no commit found in the WAL archive {self.locations.wal_archive}"
        reasons = []
        for entry in self.base_backups():
            if entry.status is Status.FAILED:
                reasons.append(f"{entry.id}: {entry.reason}")
                continue
            archive = self.wal_archive(
                since=wal.Segment.from_lsn(entry.start_lsn or "0/0", entry.timeline or 1)
            )
            if not archive.continuous:
                reasons.append(
                    f"{entry.id}: WAL archive has a gap, missing {', '.join(archive.missing[:5])}"
                )
        return "; ".join(reasons) or f"no base backup in {self.locations.base}"

    def recoverable_window(self) -> tuple[datetime, datetime] | None:
        """(earliest, latest) times point-in-time recovery can reach, or None.

        Earliest: the end of the oldest non-failed base backup with continuous WAL from its
        start. Latest: the newest commit in the archive.
        """
        latest = self.newest_restorable_point()
        if latest is None:
            return None
        for entry in sorted(self.base_backups(), key=lambda e: e.finished_at):
            if entry.status is Status.FAILED:
                continue
            archive = self.wal_archive(
                since=wal.Segment.from_lsn(entry.start_lsn or "0/0", entry.timeline or 1)
            )
            if archive.continuous:
                return entry.finished_at, latest
        return None

    # -- point-in-time recovery: base backups chosen by the target's LSN ------------------
    #
    # These read the WAL *held* (``salvage.WalHoldings``: the archive, the salvage folder
    # and any pg_wal that will be salvaged first), resolved along the timeline path replay
    # follows, so the guard's promise and replay's reality agree.

    def usable_base_backups(self, holdings: WalHoldings) -> tuple[list[BackupEntry], list[str]]:
        """Base backups replay could start from (newest first): not failed, on the replay
        path, and WAL held from their start through their consistent point (stop LSN).
        Plus why each other one is not usable."""
        usable: list[BackupEntry] = []
        rejected: list[str] = []
        for entry in self.base_backups():
            if entry.status is Status.FAILED:
                rejected.append(f"{entry.id}: {entry.reason}")
                continue
            if not (entry.start_lsn and entry.stop_lsn):
                rejected.append(f"{entry.id}: no LSN range in its backup_info.json")
                continue
            # PostgreSQL checks the backup's checkpoint is on the requested timeline's
            # history; its whole range must be, or replay would leave its timeline before
            # the backup is consistent.
            timeline = entry.timeline or 1
            if not (
                holdings.on_path(timeline, wal.lsn_to_int(entry.start_lsn))
                and holdings.on_path(timeline, wal.lsn_to_int(entry.stop_lsn) - 1)
            ):
                rejected.append(
                    f"{entry.id}: taken on timeline {timeline}, which the history of the newest "
                    f"timeline {holdings.latest_timeline} does not follow through "
                    f"{entry.start_lsn}..{entry.stop_lsn}"
                )
                continue
            missing = holdings.missing(_segment(entry.start_lsn), _segment(entry.stop_lsn))
            if missing:
                rejected.append(f"{entry.id}: WAL has a gap, missing {', '.join(missing[:5])}")
                continue
            usable.append(entry)
        usable.sort(key=lambda e: wal.lsn_to_int(e.stop_lsn or "0/0"), reverse=True)
        return usable, rejected

    def window_held(
        self, usable: list[BackupEntry], holdings: WalHoldings
    ) -> RecoverableWindow | None:
        """From the consistent point of the oldest usable base backup to the newest WAL
        held (last valid record, newest commit)."""
        from tracktion_dr.postgres.pitr import RecoverableWindow

        if not usable:
            return None
        end = holdings.end()
        return RecoverableWindow(
            earliest_time=min(e.finished_at for e in usable),
            earliest_lsn=min(wal.lsn_to_int(e.stop_lsn or "0/0") for e in usable),
            latest_time=end.last_commit,
            latest_lsn=end.last_record_lsn,
        )

    def resolve_restore_point(
        self,
        target: RecoveryTarget,
        usable: list[BackupEntry],
        holdings: WalHoldings,
        window: RecoverableWindow | None = None,
    ) -> tuple[RecoveryTarget, list[wal.RestorePoint]]:
        """The restore point's LSN and timeline, read from the WAL held (pg_waldump's
        RESTORE_POINT records) from the oldest usable base backup's start on: the newest
        one of that name, and every occurrence of the name. Refused when there is none."""
        from dataclasses import replace

        # Newest base backup's range first: that is where the newest occurrence (and the
        # base backup for it) usually is; older ranges only when it is not there.
        starts = sorted({_segment(e.start_lsn) for e in usable}, reverse=True)
        files = holdings.files_from(starts[-1])
        points: list[wal.RestorePoint] = []
        scanned_below: int | None = None
        for start in starts:
            chunk = [
                (n, f)
                for n, f in files
                if n >= start and (scanned_below is None or n < scanned_below)
            ]
            points = wal.restore_points(chunk, self.bindir) + points
            scanned_below = start
            if any(p.name == target.value for p in points):
                break
        matching = [p for p in points if p.name == target.value]
        if not matching:
            names = sorted({p.name for p in points})
            searched = f"{files[0][1].name} .. {files[-1][1].name}" if files else "(no WAL held)"
            raise InvalidInput(
                "target",
                f"restore point {target.value!r} is not in the WAL held ({searched}, along "
                f"timeline {holdings.latest_timeline}'s history); "
                + (
                    f"restore points there: {', '.join(names[-10:])}"
                    if names
                    else "there is no restore point in it"
                )
                + (f"; {window.lsn_text()}" if window else ""),
                hint="restore points are made with SELECT pg_catalog.pg_create_restore_point('name'); "
                "use a time or LSN target otherwise",
            )
        chosen = matching[-1]
        return replace(target, lsn=chosen.lsn_text, timeline=chosen.timeline), matching

    def base_backup_for_target(
        self,
        target: RecoveryTarget,
        usable: list[BackupEntry],
        holdings: WalHoldings,
        *,
        verify_now: bool = True,
    ) -> BackupEntry:
        """The newest usable base backup for ``target``, verified now (pg_verifybackup) -
        or, with ``verify_now=False``, not known to have failed verification: the caller
        verifies the copy it stages (PITR does, off the critical path).

        Chosen by the target's LSN whatever its type: an LSN or restore point needs a base
        backup whose consistent point (stop LSN) is at or before it, and WAL held through
        the target's segment; a time needs one that finished before it; latest and
        immediate take the newest. Every type but lsn/restore_point needs WAL held through
        the newest segment (a gap before the end would silently cut the replay short)."""
        rejected: list[str] = []
        target_lsn = wal.lsn_to_int(target.lsn) if target.lsn else None
        for entry in usable:
            if target.type == "time" and target.time and entry.finished_at > target.time:
                rejected.append(
                    f"{entry.id}: finished {entry.finished_at.isoformat()}, after the target"
                )
                continue
            if target_lsn is not None and wal.lsn_to_int(entry.stop_lsn or "0/0") > target_lsn:
                rejected.append(
                    f"{entry.id}: consistent only from {entry.stop_lsn}, after the target"
                )
                continue
            through = wal.Segment.from_lsn(target.lsn).number if target.lsn else None
            if target.type == "immediate":
                through = _segment(entry.stop_lsn)
            missing = holdings.missing(_segment(entry.start_lsn), through)
            if missing:
                rejected.append(f"{entry.id}: WAL has a gap, missing {', '.join(missing[:5])}")
                continue
            if not verify_now:
                return entry
            checked = self.verify(entry)
            if checked.status is Status.VERIFIED:
                return checked
            rejected.append(f"{entry.id}: {checked.reason}")
        raise NoUsableBackup(
            f"no usable base backup for target {target.describe()} in {self.locations.base}"
            + (": " + "; ".join(rejected) if rejected else " (none found)")
        )


def base_backup_check(compressed: bool, *, full: bool) -> str:
    """The name of the check a base backup gets (as recorded and reported)."""
    if not compressed:
        return "pg_verifybackup"
    return "sha256 of archives + extract + pg_verifybackup" if full else "sha256 of archives"


def _is_wal_file(relative: str) -> bool:
    """A WAL segment (plain or ``.zst``) or timeline history at the archive's top level."""
    if "/" in relative:
        return False
    if relative.endswith(".history"):
        return True
    try:
        wal.archived_segment(relative)
    except ValueError:
        return False
    return True


def _unpack_base_backup(archive: Path, folder: Path) -> None:
    """Unpack a verified offsite ``<id>.tar`` into ``folder`` (``<id>``): extracted beside
    under a hidden name, renamed into place whole, then the download is dropped (the folder
    is what every reader uses; S3 still holds the original). A half-unpacked folder left
    by a killed worker is ours and is unpacked again."""
    work = folder.with_name(f".{folder.name}.unpacking")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with tarfile.open(archive) as opened:
        extract_as_data(opened, work, keep_modes=True)  # a data directory's modes
    unpacked = work / folder.name
    if not unpacked.is_dir():
        raise ValidationFailed(f"{archive.name} does not hold the folder {folder.name}/")
    unpacked.rename(folder)
    work.rmdir()
    archive.unlink()


def restore_command_for(
    wal_location: str,
    archive_dir: Path,
    salvage_dir: Path | None,
    *,
    conn_id: str,
    os_user: str,
) -> str:
    """The ``restore_command`` for a recovery reading ``wal_location``.

    file://: ``pitr.restore_command_for`` (the archive, then the salvage folder). s3://:
    the mirror first (segments the guard already downloaded and verified), then
    ``postgres/wal_fetch.py`` (the next ones from S3, verified, cached into the mirror),
    then the salvage folder. The connection's credentials go to a file beside the mirror
    that only ``os_user`` can read; the command names only that file."""
    from tracktion_dr.postgres import pitr, wal_fetch

    if not s3_objects.is_s3(wal_location):
        return pitr.restore_command_for(archive_dir, salvage_dir)
    config = s3_objects.write_fetch_config(
        wal_location, conn_id, archive_dir, os_user, field="backups.wal_archive"
    )
    python = wal_fetch.interpreter_for(os_user)
    return wal_fetch.restore_command(archive_dir, salvage_dir, config, python)


def _segment(lsn: str | None) -> int:
    return wal.Segment.from_lsn(lsn or "0/0").number
