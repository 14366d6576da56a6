"""Seed the sandbox's ``tracktion`` database with realistic data, up to a target size.

Why a size knob: recovery timings (RTO) depend on how much there is to restore, so the
same generator seeds ~30MB for the tests (a few seconds) and 1GB+ for benchmarks. Rows go
in through COPY in batches; after each batch ``pg_database_size`` is compared with the
target, so the database ends within one batch of it.

The whole seed is one transaction: an interrupted seed leaves empty tables, and the next
``up`` seeds again from scratch. By default nothing is written when ``audio_files``
already has rows, so ``up`` never re-seeds; ``--append`` grows an existing data set.

Values are deterministic for a given ``seed`` (apart from being relative to "now"):
paths like ``/app/data/audio_files/2026/11/track_000123.flac``, BPM 60-180, musical keys,
confidence in [0, 1], JSON analysis results (built with ``json.dumps``, never by string
concatenation), and tracklists of a few tracks. ``created_at`` spreads over the past 90
days and is never in the future. Ratio audio_files : analysis_results : tracklists is
about 1 : 3 : 0.3.

CLI: ``python -m tracktion_sandbox.generate --size 1GB --dsn "host=... dbname=tracktion"``
(the DSN may also come from ``$TRACKTION_DSN`` or libpq's ``PG*`` variables, which keeps a
password off the command line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

BATCH_FILES = 1000
HISTORY = timedelta(days=90)
FORMATS = (("flac", 0.5), ("wav", 0.2), ("mp3", 0.3))
SAMPLE_RATES = (44100, 48000, 96000)
PITCHES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MOODS = ("euphoric", "dark", "melancholic", "energetic", "dreamy", "aggressive", "chill")
ARTISTS = (
    "Amelie Lens",
    "Ben Klock",
    "Charlotte de Witte",
    "DJ Koze",
    "Four Tet",
    "Helena Hauff",
    "Jeff Mills",
    "Kerri Chandler",
    "Laurent Garnier",
    "Nina Kraviz",
    "Peggy Gou",
    "Solomun",
    "Tale Of Us",
    "Adam Beyer",
    "Richie Hawtin",
    "Dixon",
    "Maceo Plex",
    "Rødhåd",
)
WORDS = (
    "Night",
    "Pulse",
    "Echo",
    "Signal",
    "Drift",
    "Horizon",
    "Circuit",
    "Velvet",
    "Static",
    "Orbit",
    "Shadow",
    "Motion",
    "Prism",
    "Tide",
    "Voltage",
    "Ember",
    "Mirror",
    "Lucid",
)
VENUES = ("Berghain", "Fabric", "De School", "Tresor", "Printworks", "Awakenings", "Dekmantel")
TRACKLIST_SOURCES = ("1001tracklists", "mixesdb", "cue_file", "manual")
ANALYSIS_TYPES = ("bpm", "key", "mood")
TRACKLIST_RATIO = 0.3

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'30MB' -> bytes (binary units: 1KB = 1024 B). Accepts B, KB, MB, GB, TB, KiB, ..."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"size {text!r} is not like 500KB, 30MB or 1GB")
    number, unit = match.groups()
    factor = _UNITS.get(unit.upper().rstrip("B").rstrip("I"))
    if factor is None:
        raise ValueError(f"size {text!r} has an unknown unit {unit!r}")
    return int(Decimal(number) * factor)


@dataclass
class _Ids:
    audio: int
    analysis: int
    tracklist: int


class _Rows:
    """Row factories for one seed; ``rng`` makes them deterministic."""

    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.rng = rng
        self.now = now

    def _after(self, start: datetime, max_seconds: float) -> datetime:
        """A moment after ``start``, never later than now."""
        return min(start + timedelta(seconds=self.rng.uniform(1, max_seconds)), self.now)

    def audio_file(self, file_id: int) -> tuple[Any, ...]:
        rng = self.rng
        created = self.now - HISTORY * rng.random()
        fmt = rng.choices([f for f, _ in FORMATS], [w for _, w in FORMATS])[0]
        duration = round(
            rng.uniform(150, 7200) if rng.random() < 0.15 else rng.uniform(120, 540), 3
        )
        sample_rate = rng.choice(SAMPLE_RATES) if fmt != "mp3" else 44100
        bytes_per_second = {"wav": sample_rate * 4, "flac": sample_rate * 2.4, "mp3": 40000}[fmt]
        name = f"track_{file_id:06d}.{fmt}"
        path = f"/app/data/audio_files/{created:%Y}/{created:%m}/{name}"
        updated = self._after(created, 86400 * 3) if rng.random() < 0.4 else None
        checksum = f"{rng.getrandbits(256):064x}"
        size = int(duration * bytes_per_second * rng.uniform(0.95, 1.05))
        return (
            file_id,
            path,
            name,
            fmt,
            size,
            Decimal(str(duration)),
            sample_rate,
            checksum,
            created,
            updated,
        )

    def analysis(
        self, row_id: int, file_id: int, file_created: datetime, kind: str
    ) -> tuple[Any, ...]:
        rng = self.rng
        confidence = round(rng.betavariate(8, 2), 4)
        processing = round(rng.uniform(0.2, 30.0), 3)
        bpm: Decimal | None = None
        key: str | None = None
        if kind == "bpm":
            value = round(rng.uniform(60, 180), 2)
            bpm = Decimal(str(value))
            result: dict[str, Any] = {
                "bpm": value,
                "beats": int(value * rng.uniform(2, 9)),
                "tempo_stable": rng.random() < 0.8,
                "algorithm": rng.choice(["multifeature", "degara", "percival"]),
            }
        elif kind == "key":
            pitch, scale = rng.choice(PITCHES), rng.choice(["major", "minor"])
            key = f"{pitch} {scale}"
            result = {
                "key": pitch,
                "scale": scale,
                "strength": round(rng.random(), 4),
                "camelot": f"{rng.randint(1, 12)}{'B' if scale == 'major' else 'A'}",
            }
        else:
            result = {
                "mood": rng.choice(MOODS),
                "energy": round(rng.random(), 3),
                "danceability": round(rng.random(), 3),
                "valence": round(rng.random(), 3),
            }
        created = self._after(file_created, 3600)
        return (
            row_id,
            file_id,
            kind,
            bpm,
            key,
            Decimal(str(confidence)),
            Decimal(str(processing)),
            json.dumps(result),
            created,
        )

    def tracklist(self, row_id: int, file_id: int, file_created: datetime) -> tuple[Any, ...]:
        rng = self.rng
        tracks = []
        offset = 0
        for position in range(1, rng.randint(3, 12) + 1):
            tracks.append(
                {
                    "position": position,
                    "artist": rng.choice(ARTISTS),
                    "title": f"{rng.choice(WORDS)} {rng.choice(WORDS)}",
                    "start_time": f"{offset // 60:02d}:{offset % 60:02d}",
                    "confidence": round(rng.uniform(0.5, 1.0), 3),
                }
            )
            offset += rng.randint(150, 420)
        title = f"{rng.choice(ARTISTS)} live at {rng.choice(VENUES)} {file_created:%Y-%m-%d}"
        created = self._after(file_created, 86400)
        return (row_id, file_id, title, json.dumps(tracks), rng.choice(TRACKLIST_SOURCES), created)


_COLUMNS = {
    "audio_files": (
        "id",
        "file_path",
        "file_name",
        "format",
        "file_size",
        "duration_seconds",
        "sample_rate",
        "checksum_sha256",
        "created_at",
        "updated_at",
    ),
    "analysis_results": (
        "id",
        "audio_file_id",
        "analysis_type",
        "bpm",
        "musical_key",
        "confidence",
        "processing_duration",
        "result",
        "created_at",
    ),
    "tracklists": ("id", "audio_file_id", "title", "tracks", "source", "created_at"),
}


def _copy(
    cur: psycopg.Cursor[Any], table: str, rows: Iterator[tuple[Any, ...]] | list[tuple[Any, ...]]
) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier("public", table), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS[table]))
    )
    count = 0
    with cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _write_batch(cur: psycopg.Cursor[Any], rows: _Rows, ids: _Ids, n_files: int) -> None:
    files = [rows.audio_file(ids.audio + i) for i in range(n_files)]
    ids.audio += n_files
    analyses = []
    tracklists = []
    for file_row in files:
        file_id, created = file_row[0], file_row[8]
        for kind in ANALYSIS_TYPES:
            analyses.append(rows.analysis(ids.analysis, file_id, created, kind))
            ids.analysis += 1
        if rows.rng.random() < TRACKLIST_RATIO:
            tracklists.append(rows.tracklist(ids.tracklist, file_id, created))
            ids.tracklist += 1
    _copy(cur, "audio_files", files)
    _copy(cur, "analysis_results", analyses)
    _copy(cur, "tracklists", tracklists)


def _next_ids(cur: psycopg.Cursor[Any]) -> _Ids:
    values = []
    for table in ("audio_files", "analysis_results", "tracklists"):
        query = sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(
            sql.Identifier("public", table)
        )
        row = cur.execute(query).fetchone()
        values.append(int(row[0]) if row else 1)
    return _Ids(*values)


def _sync_sequences(cur: psycopg.Cursor[Any]) -> None:
    """Explicit ids were copied in: move each bigserial sequence past them."""
    for table in ("audio_files", "analysis_results", "tracklists"):
        qualified = f"public.{table}"
        cur.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                "greatest((SELECT max(id) FROM {}), 1))"
            ).format(sql.Identifier("public", table)),
            (qualified,),
        )


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts = {}
    for table in ("audio_files", "analysis_results", "tracklists"):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
        row = conn.execute(query).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def _database_size(cur: psycopg.Cursor[Any]) -> int:
    row = cur.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def generate(
    dsn: str, size: str = "30MB", seed: int = 42, *, append: bool = False
) -> dict[str, int]:
    """Fill the database at ``dsn`` until it reaches ``size``; return rows per table.

    Without ``append``, tables that already hold audio files are left untouched.
    """
    target = parse_size(size)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        existing = row_counts(conn)
        conn.commit()
        if existing["audio_files"] and not append:
            log.info("tracktion data already present (%s): not seeding", existing)
            return existing
        started = time.monotonic()
        with conn.transaction(), conn.cursor() as cur:
            # Explicit ids need the tables to ourselves for the length of the seed.
            cur.execute(
                "LOCK TABLE public.audio_files, public.analysis_results, "
                "public.tracklists IN SHARE ROW EXCLUSIVE MODE"
            )
            ids = _next_ids(cur)
            # Seeded PRNG on purpose: the same seed gives the same data set.
            rng = random.Random(f"{seed}:{ids.audio}")  # noqa: S311
            rows = _Rows(rng, datetime.now(UTC))
            batches = 0
            while True:
                _write_batch(cur, rows, ids, BATCH_FILES)
                batches += 1
                current = _database_size(cur)
                if batches % 20 == 0:
                    log.info(
                        "seeded %d batches, database now %.1f MB of %.1f MB",
                        batches,
                        current / 2**20,
                        target / 2**20,
                    )
                if current >= target:
                    break
            _sync_sequences(cur)
        counts = row_counts(conn)
        conn.commit()
    log.info(
        "seeded tracktion to %.1f MB in %.1f s: %s",
        current / 2**20,
        time.monotonic() - started,
        counts,
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="30MB", help="target database size, e.g. 30MB, 1GB")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TRACKTION_DSN", ""),
        help="libpq DSN (default $TRACKTION_DSN, then PG* variables)",
    )
    parser.add_argument(
        "--append", action="store_true", help="add rows even when the tables are not empty"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        parse_size(args.size)
    except ValueError as exc:
        parser.error(str(exc))
    counts = generate(args.dsn, size=args.size, seed=args.seed, append=args.append)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
