"""PITR targets, the recoverable window, recovery settings, the WAL held and salvaged, the
recovery marker - the parts that need no server (the live ones are in
tests/integration/test_database_pitr.py and test_pitr_fault_injection.py)."""

from __future__ import annotations

import os
import pwd
import struct
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.postgres import pitr, wal
from tracktion_dr.postgres.recovery_marker import (
    RecoveryMarker,
    last_fatal_line,
    postmaster_pid,
    read_marker,
    recovery_pending,
    write_marker,
)
from tracktion_dr.postgres.salvage import (
    WalHoldings,
    WalSource,
    archive_salvaged_history,
    salvage_dir_for,
    salvage_wal,
)
from tracktion_dr.postgres.wal import (
    RECORD,
    SEGMENT_BYTES,
    Segment,
    int_to_lsn,
    lsn_to_int,
    segment_header_matches,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OS_USER = pwd.getpwuid(os.geteuid()).pw_name


def window(**overrides) -> pitr.RecoverableWindow:
    values = {
        "earliest_time": NOW - timedelta(hours=2),
        "earliest_lsn": lsn_to_int("0/6000100"),
        "latest_time": NOW - timedelta(minutes=1),
        "latest_lsn": lsn_to_int("0/1B0044A0"),
    }
    return pitr.RecoverableWindow(**{**values, **overrides})


# --- targets -------------------------------------------------------------------------------


def test_lsns_are_spelled_as_the_server_spells_them():
    assert int_to_lsn(lsn_to_int("0/0B0002D8")) == "0/B0002D8"
    assert int_to_lsn(lsn_to_int("1/5A000028")) == "1/5A000028"
    assert pitr.parse_target("lsn", " 0/0b0002d8 ").value == "0/B0002D8"


@pytest.mark.parametrize(
    ("target_type", "value", "message"),
    [
        ("sometime", "", "target_type: 'sometime' is not one of"),
        ("time", "", "a value is required"),
        ("time", "noon", "not an ISO 8601 time"),
        ("time", "2026-11-26T03:00:00", "has no time zone"),
        ("time", "2099-01-01T00:00:00Z", "is in the future"),
        ("lsn", "5A000028", "not an LSN"),
        ("restore_point", "drop table x;", "not a restore point name"),
    ],
)
def test_a_target_of_the_wrong_form_is_refused(target_type, value, message):
    with pytest.raises(InvalidInput, match=message):
        pitr.parse_target(target_type, value, now=NOW)


def test_time_targets_are_checked_against_the_window_held():
    early = pitr.parse_target("time", (NOW - timedelta(hours=3)).isoformat(), now=NOW)
    with pytest.raises(
        InvalidInput, match="before the oldest usable base backup ended; recoverable window is"
    ):
        pitr.check_in_window(early, window())
    at_the_end = pitr.parse_target("time", (NOW - timedelta(minutes=1)).isoformat(), now=NOW)
    with pytest.raises(InvalidInput, match="not before the newest commit held"):
        pitr.check_in_window(at_the_end, window())
    inside = pitr.parse_target("time", (NOW - timedelta(minutes=30)).isoformat(), now=NOW)
    pitr.check_in_window(inside, window())


def test_lsn_targets_are_refused_with_the_window_in_lsns():
    past = pitr.parse_target("lsn", "FFFFFFFF/FFFFFFFF")
    with pytest.raises(InvalidInput) as refused:
        pitr.check_in_window(past, window())
    assert "past the newest WAL held" in str(refused.value)
    assert "recoverable window is 0/6000100 .. 0/1B0044A0" in str(refused.value)
    assert refused.value.hint
    before = pitr.parse_target("lsn", "0/10")
    with pytest.raises(
        InvalidInput, match="before the consistent point of every usable base backup"
    ):
        pitr.check_in_window(before, window())
    pitr.check_in_window(pitr.parse_target("lsn", "0/1B0044A0"), window())  # the last record


def test_a_resolved_restore_point_is_checked_like_an_lsn():
    point = pitr.RecoveryTarget("restore_point", "before_migration", lsn="0/1000", timeline=1)
    with pytest.raises(
        InvalidInput, match="restore point 'before_migration' \\(at 0/1000\\) is before"
    ):
        pitr.check_in_window(point, window())


def test_targeted_recoveries_pause_and_latest_waits_as_a_standby():
    timed = pitr.parse_target("time", "2026-11-26T11:00:00Z", now=NOW).settings()
    assert timed["recovery_target_action"] == "pause"
    assert timed["hot_standby"] == "on"  # without it, pause acts as shutdown
    assert timed["recovery_target_time"] == "2026-11-26 11:00:00.000000+00"
    assert timed["primary_conninfo"] == ""  # streams from nobody
    latest = pitr.parse_target("latest", "")
    assert latest.standby_mode
    assert "recovery_target_action" not in latest.settings()
    assert pitr.parse_target("immediate", "").settings()["recovery_target"] == "immediate"
    assert pitr.RecoveryTarget.from_dict(latest.as_dict()) == latest


def test_restore_command_tries_the_archive_then_the_salvage_folder():
    command = pitr.restore_command_for(Path("/b/wal archive"), Path("/b/100%.salvage"))
    # % doubled for the server (which expands %f and %p); a plain path needs no quotes.
    assert command.startswith("a='/b/wal archive'; s=/b/100%%.salvage; ")
    assert command.endswith(
        'if test -f "$a/%f.zst"; then zstd -dqf "$a/%f.zst" -o %p; '
        'elif test -f "$a/%f"; then cp "$a/%f" %p; '
        'elif test -f "$s/%f"; then cp "$s/%f" %p; else exit 1; fi'
    )


def test_archive_and_restore_commands_fit_what_postgresql_expands():
    """PostgreSQL 15 cuts the expanded archive_command at 1024 bytes (measured: a longer
    one failed with 'Syntax error: end of file unexpected' and nothing was archived)."""
    long = Path("/" + "x" * 700)
    with pytest.raises(ValueError, match="cuts it at 1024"):
        wal.archive_command(long)
    assert len(wal.archive_command(Path("/" + "x" * 300))) < 1024 - 64


def test_recovery_settings_pick_the_signal_file_and_come_out_again(tmp_path):
    (tmp_path / "postgresql.auto.conf").write_text("work_mem = '8MB'\n")
    (tmp_path / "standby.signal").write_text("")  # a base backup of a standby carries it
    pitr.write_recovery_settings(tmp_path, "cp x %p", pitr.parse_target("lsn", "0/5A000028"))
    assert (tmp_path / "recovery.signal").exists() and not (tmp_path / "standby.signal").exists()
    text = (tmp_path / "postgresql.auto.conf").read_text()
    assert "recovery_target_lsn = '0/5A000028'" in text and "work_mem" in text
    pitr.write_recovery_settings(tmp_path, "cp x %p", pitr.parse_target("latest", ""))
    assert (tmp_path / "standby.signal").exists() and not (tmp_path / "recovery.signal").exists()
    assert "recovery_target_lsn" not in (tmp_path / "postgresql.auto.conf").read_text()
    assert pitr.clear_recovery_settings(tmp_path)
    assert (tmp_path / "postgresql.auto.conf").read_text() == "work_mem = '8MB'\n"
    assert not pitr.clear_recovery_settings(tmp_path)


def test_recovery_settings_come_out_after_alter_system_rewrote_the_file(tmp_path):
    """ALTER SYSTEM (allowed on a server in recovery) rewrites postgresql.auto.conf without
    comments: the settings are then found by what the marker says was written."""
    auto_conf = tmp_path / "postgresql.auto.conf"
    auto_conf.write_text("work_mem = '8MB'\n")
    command = pitr.restore_command_for(Path("/b/wal archive"), Path("/b/s"))
    written = pitr.write_recovery_settings(
        tmp_path, command, pitr.parse_target("lsn", "0/5A000028")
    )
    rewritten = (
        "# Do not edit this file manually!\n"
        + "".join(
            line + "\n"
            for line in auto_conf.read_text().splitlines()
            if line and not line.startswith("#")
        )
        + "archive_command = ''\n"
    )
    auto_conf.write_text(rewritten)
    assert not pitr.clear_recovery_settings(tmp_path)  # nothing to go by
    assert pitr.clear_recovery_settings(tmp_path, written)
    assert auto_conf.read_text() == (
        "# Do not edit this file manually!\nwork_mem = '8MB'\narchive_command = ''\n"
    )


def test_pg_waldump_lines_are_read():
    line = (
        "rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/0B0002D8, "
        "prev 0/0B0002A0, desc: RESTORE_POINT rp_probe"
    )
    match = RECORD.search(line)
    assert match and match.group(1) == "0/0B0002D8" and match.group(2) == "RESTORE_POINT"
    assert match.group(3) == "rp_probe"


# --- WAL held and salvaged ----------------------------------------------------------------


def write_segment(folder: Path, number: int, timeline: int = 1, *, valid: bool = True) -> Path:
    """A segment file whose first page header names ``number`` (or an old segment, like a
    recycled file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Segment.from_number(number, timeline).name()
    address = number * SEGMENT_BYTES if valid else (number + 100) * SEGMENT_BYTES
    path.write_bytes(struct.pack("<HHIQI", 0xD110, 2, timeline, address, 0) + b"\0" * 64)
    return path


def test_a_recycled_pg_wal_file_is_not_wal(tmp_path):
    good = write_segment(tmp_path, 5)
    recycled = write_segment(tmp_path / "r", 9, valid=False)
    assert segment_header_matches(good, 5)
    assert not segment_header_matches(recycled, 9)
    zeroed = tmp_path / Segment.from_number(6).name()
    zeroed.write_bytes(b"\0" * 128)
    assert not segment_header_matches(zeroed, 6)


def test_holdings_follow_the_latest_timeline_and_count_every_folder(tmp_path):
    archive, standby = tmp_path / "archive", tmp_path / "standby"
    for number in (1, 2, 3, 4):
        write_segment(archive, number, 1)
    (archive / "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    for number in (3, 4):
        write_segment(archive, number, 2)
    write_segment(standby / "pg_wal", 5, 2)  # only the standby has it
    write_segment(standby / "pg_wal", 7, 2, valid=False)  # recycled: not WAL
    holdings = WalHoldings(
        [WalSource("archive", archive, restorable=True), WalSource.pg_wal("standby", standby)]
    )
    assert holdings.latest_timeline == 2
    path = holdings.path_segments()
    assert {n: path[n][0].timeline for n in path} == {1: 1, 2: 1, 3: 2, 4: 2, 5: 2}
    assert holdings.missing(1) == []
    assert holdings.best(5).source == "standby"
    assert holdings.on_path(1, lsn_to_int("0/2000000")) and not holdings.on_path(
        1, lsn_to_int("0/4000000")
    )
    (archive / Segment.from_number(3, 2).name()).rename(tmp_path / "hidden")
    assert holdings.missing(1) == []  # computed once; a fresh view sees the gap:
    assert WalHoldings([WalSource("archive", archive, restorable=True)]).missing(1) == [
        "000000020000000000000003"
    ]


def test_a_recovery_to_an_ancestor_timeline_is_followed_newest_first(tmp_path):
    """TL 3 was recovered to 0/6000100, a point on TL 1 long before TL 2 began at
    0/79000000: its history lists switch points out of order. Replay reads TL 3's files
    from segment 6 on (as PostgreSQL walks the history newest first), never TL 2's."""
    archive = tmp_path / "archive"
    for number in range(1, 0x7B):
        write_segment(archive, number, 1 if number < 0x79 else 2)
    (archive / "00000002.history").write_text("1\t0/79000000\tx\n")
    (archive / "00000003.history").write_text("1\t0/79000000\tx\n2\t0/6000100\ty\n")
    for number in range(6, 0xC):
        write_segment(archive, number, 3)
    holdings = WalHoldings([WalSource("archive", archive, restorable=True)])
    assert holdings.latest_timeline == 3
    assert holdings.best(0x78) is None  # TL 1's 0x78 is not on TL 3's path
    assert holdings.best(5).timeline == 1 and holdings.best(0xB).timeline == 3
    assert holdings.newest_number() == 0xB
    assert holdings.missing(1, 0xB) == []
    assert holdings.on_path(1, lsn_to_int("0/6000060"))  # the base backup's checkpoint
    assert not holdings.on_path(1, lsn_to_int("0/7000000"))
    assert not holdings.on_path(2, lsn_to_int("0/7A000000"))


def test_salvage_copies_only_what_the_archive_lacks(tmp_path):
    archive, old_primary = tmp_path / "wal_archive", tmp_path / "primary.pre_x"
    write_segment(archive, 1)
    write_segment(old_primary / "pg_wal", 1)  # archived already
    write_segment(old_primary / "pg_wal", 2)  # not archived: salvaged
    write_segment(old_primary / "pg_wal", 3, valid=False)  # recycled: never
    (old_primary / "pg_wal" / "00000002.history").write_text("1\t0/2000000\tx\n")
    report = salvage_wal([("old primary", old_primary)], archive, os_user=OS_USER)
    salvage = salvage_dir_for(archive)
    assert salvage == tmp_path / "wal_archive.salvage"
    assert sorted(p.name for p in salvage.iterdir()) == [
        "000000010000000000000002",
        "00000002.history",
    ]
    assert report.copied and "salvaged 2 WAL file(s)" in report.describe()
    again = salvage_wal([("old primary", old_primary)], archive, os_user=OS_USER)
    assert again.copied == [] and again.improved == []
    assert (old_primary / "pg_wal" / "000000010000000000000002").exists()  # copied, not moved


def test_after_promotion_the_archive_gets_the_salvaged_wal_the_new_history_runs_through(
    tmp_path,
):
    archive, data = tmp_path / "wal_archive", tmp_path / "primary"
    salvage = salvage_dir_for(archive)
    for number in (1, 2):
        write_segment(archive, number, 1)
    for number in (3, 4, 5):  # only the standby had them; 5 holds the switch point
        write_segment(salvage, number, 1)
    (data / "pg_wal").mkdir(parents=True)
    (data / "pg_wal" / "00000002.history").write_text("1\t0/5000100\tno recovery target\n")
    write_segment(data / "pg_wal", 5, 2)
    archived = archive_salvaged_history(data, archive, os_user=OS_USER)
    assert archived == ["000000010000000000000003", "000000010000000000000004"]
    assert (
        WalHoldings(
            [WalSource("archive", archive, restorable=True), WalSource.pg_wal("p", data)]
        ).missing(1)
        == []
    )
    assert not (archive / "000000010000000000000005").exists()  # PostgreSQL archives TL 2's
    assert archive_salvaged_history(data, archive, os_user=OS_USER) == []


# --- the recovery marker ------------------------------------------------------------------


def test_the_marker_says_whose_recovery_a_directory_is(tmp_path):
    assert read_marker(tmp_path) is None
    marker = RecoveryMarker(
        incident_id="DR-20261126-120000",
        cluster="main",
        tag="20261126_120000",
        target={"type": "time", "value": "2026-11-26T11:00:00Z"},
        base_backup="base_20261126T010000Z",
        base_start_lsn="0/6000028",
    )
    write_marker(tmp_path, marker, OS_USER)
    assert read_marker(tmp_path) == marker
    assert marker.same_target({"type": "time", "value": "2026-11-26T11:00:00Z"})
    assert not marker.same_target({"type": "latest", "value": ""})
    assert not recovery_pending(tmp_path)
    (tmp_path / "recovery.signal").write_text("")
    assert recovery_pending(tmp_path)


def test_a_pid_file_proves_nothing_without_its_postmaster(tmp_path):
    assert postmaster_pid(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")
    assert postmaster_pid(tmp_path) is None  # alive, but not a postgres process
    (tmp_path / "postmaster.pid").write_text("999999999\n")
    assert postmaster_pid(tmp_path) is None


def test_a_process_that_only_mentions_postgres_in_its_arguments_is_no_postmaster(tmp_path):
    """A live process whose arguments say postgres (pytest given test_sandbox_postgres.py)."""
    sleeper = subprocess.Popen(["sleep", "30", "postgres"])
    try:
        (tmp_path / "postmaster.pid").write_text(f"{sleeper.pid}\n{tmp_path}\n")
        assert postmaster_pid(tmp_path) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_fatal_line_is_quoted_from_the_log(tmp_path):
    log = tmp_path / "recovery.log"
    log.write_text(
        "LOG:  starting point-in-time recovery\n"
        "FATAL:  recovery ended before configured recovery target was reached\n"
        "LOG:  startup process (PID 5) exited with exit code 1\n"
    )
    assert (
        last_fatal_line(log)
        == "FATAL:  recovery ended before configured recovery target was reached"
    )
    assert last_fatal_line(tmp_path / "missing.log") is None
