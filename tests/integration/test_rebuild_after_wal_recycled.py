"""The old primary rebuilt after the new primary recycled the WAL of the failover, against
the sandbox's real clusters:

Given a clean stop of the primary and dr_failover (the replica promoted: nothing diverged,
pg_rewind has nothing to undo and copies nothing), and then the new primary switches WAL
and checkpoints until the first segment of its new timeline is gone from its ``pg_wal``
(archived first, so the archive has it): what a busy primary does in the minutes between a
failover and the rebuild.

When dr_standby_rebuild runs, Then the rewound standby replays that segment from the WAL
archive (its ``restore_command``) and streams, with the rows written on the new primary.
When the archive lacks the segment too (the archive not mounted on the old node's host),
Then the rewound copy can never catch up: it is replaced by a fresh base backup, which
streams. Either way the old directory stays kept aside, and the rebuilt standby carries no
replication slot of its primary days (it would keep WAL no one reads). A switchover then
brings the sandbox back to its standard topology, every timeline kept in the archive.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime

import psycopg
import pytest
from harness.topology import _pg_ctl, restore_standard_topology

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.postgres.pitr import aside_path
from tracktion_dr.postgres.restore import incident_tag
from tracktion_dr.postgres.wal import COMPRESSED_SUFFIX
from tracktion_sandbox import layout as L
from tracktion_sandbox import pg

pytestmark = pytest.mark.sandbox

TABLE = "public.dr_recycled_probe"


def query(sandbox, port: int, sql: str, database: str = "postgres") -> list[tuple]:
    password = sandbox.secrets.postgres_password
    with pg.connect(port, L.SUPERUSER, password, database) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except psycopg.OperationalError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def fail_over_and_recycle(sandbox) -> str:
    """Clean stop, dr_failover, rows written on the new primary, then WAL switched and
    checkpointed until the new timeline's first segment left its pg_wal (and reached the
    archive). Returns that segment's name."""
    layout = sandbox.layout
    with pg.connect(
        L.PRIMARY_PORT, L.SUPERUSER, sandbox.secrets.postgres_password, "postgres"
    ) as c:
        c.execute("CHECKPOINT")  # the replica has everything once the stop's checkpoint streams
    _pg_ctl(layout, layout.primary_data, "stop", "-m", "fast", "-w")
    failover = run_dag(
        "dr_failover",
        {
            "environment": "drill",
            "target": "database",
            "incident_started_at": datetime.now(UTC).isoformat(),
        },
    )
    assert task_states(failover)["verdict"] == "success", task_states(failover)
    # A slot this node kept from an earlier time as primary (another test's) would hold the
    # WAL this test needs recycled.
    query(
        sandbox,
        L.REPLICA_PORT,
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active",
    )
    query(
        sandbox,
        L.REPLICA_PORT,
        f"CREATE TABLE {TABLE} AS SELECT g AS id FROM generate_series(1, 300) AS g",
        L.APP_DATABASE,
    )
    timeline = query(sandbox, L.REPLICA_PORT, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0][
        :8
    ]
    first = min(
        name
        for (name,) in query(sandbox, L.REPLICA_PORT, "SELECT name FROM pg_ls_waldir()")
        if name.startswith(timeline) and len(name) == 24
    )
    for _ in range(10):
        query(sandbox, L.REPLICA_PORT, "SELECT pg_switch_wal()")
        query(sandbox, L.REPLICA_PORT, "CHECKPOINT")
        held = {
            name for (name,) in query(sandbox, L.REPLICA_PORT, "SELECT name FROM pg_ls_waldir()")
        }
        if first not in held:
            break
    else:
        raise AssertionError(f"{first} still in the new primary's pg_wal after 10 checkpoints")
    archived = layout.wal_archive / f"{first}{COMPRESSED_SUFFIX}"
    wait_for(archived.exists, 60, f"{archived.name} in the archive")
    return first


def rebuild(incident_id: str):
    return run_dag(
        "dr_standby_rebuild",
        {"environment": "drill", "cluster": "main", "incident_id": incident_id, "notify": False},
    )


@pytest.mark.parametrize("archive_has_it", [True, False], ids=["from-archive", "base-backup"])
def test_the_rebuilt_standby_streams_after_the_new_primary_recycled_the_failovers_wal(
    sandbox, tmp_path, archive_has_it
):
    layout = sandbox.layout
    archive_before = {p.name for p in layout.wal_archive.iterdir()}
    asides_before = set(layout.pg_root.iterdir())
    hidden = None
    finished = False
    incident = f"DR-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:
        first = fail_over_and_recycle(sandbox)
        if not archive_has_it:
            hidden = (layout.wal_archive / f"{first}{COMPRESSED_SUFFIX}", tmp_path / first)
            shutil.move(*hidden)

        rebuilt = rebuild(incident)

        if hidden is not None:  # the archive whole again before anything else reads it
            shutil.move(hidden[1], hidden[0])
            hidden = None
        assert task_states(rebuilt)["verdict"] == "success", task_states(rebuilt)
        result = task_result(rebuilt, "rebuild_primary")
        detail = result["event"]["detail"]
        if archive_has_it:
            assert result["method"] == "pg_rewind", detail
            assert "reads the WAL archive" in detail, detail
        else:
            assert result["method"] == "pg_basebackup", detail
            assert f"requested WAL segment {first} has already been removed" in detail, detail
            assert "replaced by a fresh base backup" in detail, detail
        wait_for(
            lambda: (
                query(sandbox, L.PRIMARY_PORT, f"SELECT count(*) FROM {TABLE}", L.APP_DATABASE)
                == [(300,)]
            ),
            60,
            "the new primary's rows on the rebuilt standby",
        )
        assert query(sandbox, L.PRIMARY_PORT, "SELECT pg_is_in_recovery()") == [(True,)]
        # the slot of its primary days did not come along (it would hold WAL no one reads)
        assert query(sandbox, L.PRIMARY_PORT, "SELECT slot_name FROM pg_replication_slots") == []
        kept = aside_path(layout.primary_data, incident_tag(incident))
        assert (kept / "PG_VERSION").exists(), "the old directory is kept aside"

        # Back to the standard topology as an operator fails back (every timeline stays in
        # the archive: the tests after this one recover from it).
        back = run_dag(
            "dr_switchover",
            {
                "environment": "drill",
                "cluster": "main",
                "to_node": "primary",
                "maintenance_window_confirmed": True,
                "incident_id": f"DR-{datetime.now(UTC):%Y%m%d-%H%M%S}",
                "notify": False,
            },
        )
        assert task_states(back)["verdict"] == "success", task_states(back)
        assert query(sandbox, L.PRIMARY_PORT, "SELECT pg_is_in_recovery()") == [(False,)]
        finished = True
    finally:
        if hidden is not None:
            shutil.move(hidden[1], hidden[0])
        if not finished:  # best effort: the next test needs the standard sandbox
            if pg.port_open(L.PRIMARY_PORT):
                _pg_ctl(layout, layout.primary_data, "stop", "-m", "fast", "-w", check=False)
            restore_standard_topology(layout, archive_before)
        query(sandbox, L.PRIMARY_PORT, f"DROP TABLE IF EXISTS {TABLE}", L.APP_DATABASE)
        for path in set(layout.pg_root.iterdir()) - asides_before:
            if ".pre_" in path.name and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
