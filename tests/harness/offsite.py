"""A base backup the recovery site can replay: on the primary's current timeline, verified.

Tests that run before a site failover may have recovered the primary to a point in time:
the newest base backup is then on a branch the archive's newest timeline left, the site
cannot replay it to the end of the archive, and the site failover's guard rightly refuses.
What an operator does after a PITR - take a base backup on the new timeline before the
offsite copy can serve a site failover (the guard's hint says so) - the tests do here.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from tracktion_dr.backups.catalog import Catalog, Status


def primary_timeline(conninfo: str) -> int:
    """The timeline the primary writes on now (its current WAL file's name says it)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        (walfile,) = conn.execute(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())"
        ).fetchone()
    return int(walfile[:8], 16)


def base_backup_on_current_timeline(
    catalog: Catalog, conninfo: str, take_base_backup: Callable[[], object]
):
    """The newest base backup, verified, taken on the primary's current timeline: when the
    newest one is not on it, ``take_base_backup`` runs first (the dr_backup_base job)."""
    timeline = primary_timeline(conninfo)
    bases = catalog.base_backups()
    if not bases or bases[0].timeline != timeline:
        take_base_backup()
        bases = catalog.base_backups()
    newest = bases[0]
    assert newest.timeline == timeline, (newest, timeline)
    if newest.status is not Status.VERIFIED:
        newest = catalog.verify(newest)
        assert newest.status is Status.VERIFIED, newest
    return newest
