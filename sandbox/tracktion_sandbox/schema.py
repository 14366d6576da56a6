"""The Tracktion-like schema of the sandbox's ``tracktion`` database, plus the DR canary.

Kept as a Python constant (not a loose .sql file) so it ships with the package however it
is installed. Every statement is idempotent (``IF NOT EXISTS``), so ``up`` can apply it on
every run. It is applied while connected as the ``tracktion`` role, which therefore owns
every object, as in production.

The business rules of the seed (confidence within [0, 1], file_size > 0,
processing_duration >= 0, created_at not in the future) are deliberately *not* enforced
with CHECK constraints: the post-recovery validation DAGs must be able to find rows that
break them, so the database has to accept such rows.

``dr_canary.heartbeat`` is written every second by ``tracktion_sandbox.canary``; after a
recovery its newest surviving row measures the real data loss (RPO).
"""

from __future__ import annotations

from typing import Any

import psycopg

APP_TABLES = ("public.audio_files", "public.analysis_results", "public.tracklists")
CANARY_TABLE = "dr_canary.heartbeat"

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS public.audio_files (
    id               bigserial PRIMARY KEY,
    file_path        text NOT NULL UNIQUE,
    file_name        text,
    format           text CHECK (format IN ('wav', 'flac', 'mp3')),
    file_size        bigint,
    duration_seconds numeric,
    sample_rate      integer,
    checksum_sha256  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz
);
CREATE INDEX IF NOT EXISTS audio_files_created_at_idx ON public.audio_files (created_at);

CREATE TABLE IF NOT EXISTS public.analysis_results (
    id                  bigserial PRIMARY KEY,
    audio_file_id       bigint NOT NULL REFERENCES public.audio_files (id),
    analysis_type       text,
    bpm                 numeric,
    musical_key         text,
    confidence          numeric,
    processing_duration numeric,  -- seconds
    result              jsonb,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS analysis_results_audio_file_id_idx
    ON public.analysis_results (audio_file_id);
CREATE INDEX IF NOT EXISTS analysis_results_created_at_idx ON public.analysis_results (created_at);

CREATE TABLE IF NOT EXISTS public.tracklists (
    id            bigserial PRIMARY KEY,
    audio_file_id bigint REFERENCES public.audio_files (id),
    title         text,
    tracks        jsonb,
    source        text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tracklists_audio_file_id_idx ON public.tracklists (audio_file_id);
CREATE INDEX IF NOT EXISTS tracklists_created_at_idx ON public.tracklists (created_at);

CREATE SCHEMA IF NOT EXISTS dr_canary;
CREATE TABLE IF NOT EXISTS dr_canary.heartbeat (
    id         bigserial PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    writer     text
);
CREATE INDEX IF NOT EXISTS heartbeat_written_at_idx ON dr_canary.heartbeat (written_at);
"""


def apply(conn: psycopg.Connection[Any]) -> None:
    """Create whatever is missing, in one transaction (connect as the owning role)."""
    with conn.transaction():
        conn.execute(SCHEMA_SQL)
