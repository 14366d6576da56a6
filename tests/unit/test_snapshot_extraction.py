"""Configuration snapshots are extracted with tarfile's ``data`` filter, and where Python has
none (Debian bookworm's 3.11.2, the deployment image's) with a stricter stand-in: both keep
a good archive whole and refuse a hostile one before writing anything."""

from __future__ import annotations

import io
import tarfile

import pytest

from tracktion_dr.core.safe_tar import extract_as_data

BOTH = pytest.mark.parametrize("native", [True, False], ids=["data-filter", "stand-in"])


def archive(tmp_path, *members: tarfile.TarInfo, payload: bytes = b'{"a": 1}\n'):
    path = tmp_path / "snapshot.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            data = io.BytesIO(payload) if member.isfile() else None
            if member.isfile():
                member.size = len(payload)
            tar.addfile(member, data)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


@BOTH
def test_a_good_snapshot_is_extracted_whole(tmp_path, native):
    if native and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no extraction filters")
    path = archive(
        tmp_path,
        member("config", tarfile.DIRTYPE, 0o755),
        member("config/app.json", mode=0o4666),
    )
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(path, "r:gz") as opened:
        extract_as_data(opened, out, native=native)
    extracted = out / "config" / "app.json"
    assert extracted.read_bytes() == b'{"a": 1}\n'
    assert extracted.stat().st_mode & 0o7022 == 0  # no setuid, no group/other write


@BOTH
@pytest.mark.parametrize(
    "hostile",
    [
        member("../escaped.json"),
        member("config/link", tarfile.SYMTYPE, link="/etc/passwd"),
    ],
    ids=["dot-dot", "symlink-out"],
)
def test_a_hostile_member_fails_the_extraction(tmp_path, native, hostile):
    if native and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no extraction filters")
    path = archive(tmp_path, hostile)
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(path, "r:gz") as opened, pytest.raises(tarfile.TarError):
        extract_as_data(opened, out, native=native)
    assert not (tmp_path / "escaped.json").exists()


def test_the_stand_in_refuses_an_absolute_name(tmp_path):
    """(The data filter strips the leading slash and extracts inside; the stand-in refuses.)"""
    path = archive(tmp_path, member(str(tmp_path / "escaped.json")))
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(path, "r:gz") as opened, pytest.raises(tarfile.TarError):
        extract_as_data(opened, out, native=False)
    assert not (tmp_path / "escaped.json").exists()


@BOTH
def test_a_base_backup_keeps_its_directory_modes(tmp_path, native):
    """PostgreSQL refuses a data directory that is not 0700/0750: the ``data`` filter would
    make it 0755, so a base backup is extracted keeping its modes."""
    path = archive(
        tmp_path,
        member("base_1", tarfile.DIRTYPE, mode=0o700),
        member("base_1/PG_VERSION", mode=0o600),
    )
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(path) as opened:
        extract_as_data(opened, out, native=native, keep_modes=True)
    assert (out / "base_1").stat().st_mode & 0o777 == 0o700
    assert (out / "base_1" / "PG_VERSION").stat().st_mode & 0o777 == 0o600
