"""Crafted archives: nothing outside the destination ever changes."""

from __future__ import annotations

import gzip
import os
import tarfile
import uuid
from pathlib import Path

import pytest
from restore_helpers import Crafted, snapshot

from wingsbak.archive import archive_to_file
from wingsbak.archive.extract import RestoreError, restore_archive_file


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "base" / "dest"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "base" / "outside"
    o.mkdir()
    (o / "secret").write_text("outside file")
    return o


def restore_checked(tmp_path: Path, archive: Path, dest: Path) -> int:
    """Restore and assert that nothing but ``dest`` changed under the test's directory."""
    before = snapshot(tmp_path, skip=dest)
    result = restore_archive_file(archive, dest)
    assert snapshot(tmp_path, skip=dest) == before
    assert not list(dest.rglob(".wingsbak-restore-*"))
    return result.skipped


def test_dot_dot_and_absolute_names_are_skipped(tmp_path: Path, dest: Path, outside: Path) -> None:
    unique = f"wingsbak-test-{uuid.uuid4().hex}"
    archive = (
        Crafted(tmp_path / "a.tar.gz")
        .file(f"../{unique}")
        .file(f"ok/../../{unique}")
        .file(f"{outside}/abs-{unique}")
        .file(f"/etc/{unique}")
        .file("n" * 300, b"too long for any file system")
        .file("fine.txt", b"kept")
        .close()
    )
    assert restore_checked(tmp_path, archive, dest) == 5
    assert not Path("/etc", unique).exists()
    assert not (dest.parent / unique).exists()
    assert (dest / "fine.txt").read_bytes() == b"kept"
    assert sorted(p.name for p in dest.iterdir()) == ["fine.txt"]


def test_symlinks_out_and_files_through_them_are_skipped(
    tmp_path: Path, dest: Path, outside: Path
) -> None:
    archive = (
        Crafted(tmp_path / "a.tar.gz")
        .link("root", "/")
        .file("root/tmp/through-root")
        .link("abs", str(outside))
        .file("abs/through-abs")
        .link("rel", "../outside")
        .file("rel/through-rel")
        .dir("a")
        .link("a/up", "..")  # inside: the destination root itself
        .link("a/x", "up/../..")  # textually inside, really outside: refused
        .file("a/x/secret", b"overwritten")
        .file("a/up/via-up")  # through a symlink created by this archive
        .link("a/sib", "../fine")
        .close()
    )
    # Absolute links are restored as links (they mean paths in the game container), and
    # nothing is written through them. Skipped: the files through root, abs and a/up, the
    # relative link out and a/x.
    assert restore_checked(tmp_path, archive, dest) == 5
    assert not Path("/tmp/through-root").exists()
    assert (outside / "secret").read_text() == "outside file"
    assert not (outside / "through-abs").exists()
    assert os.readlink(dest / "root") == "/"
    assert os.readlink(dest / "abs") == str(outside)
    assert os.readlink(dest / "a" / "up") == ".."
    assert os.readlink(dest / "a" / "sib") == "../fine"
    assert not (dest / "via-up").exists()
    # With the links refused, the files behind them land in plain directories inside dest.
    for rel in ("rel/through-rel", "a/x/secret"):
        assert (dest / rel).is_file()
        assert not any(p.is_symlink() for p in (dest / rel).parents if dest in p.parents)


def test_hard_links_out_or_to_non_files_are_skipped(
    tmp_path: Path, dest: Path, outside: Path
) -> None:
    passwd = Path("/etc/passwd")
    before = (passwd.read_bytes(), passwd.stat().st_nlink)
    archive = (
        Crafted(tmp_path / "a.tar.gz")
        .link("p1", "/etc/passwd", tarfile.LNKTYPE)
        .link("p2", "../../../../../../../../etc/passwd", tarfile.LNKTYPE)
        .link("s1", "../outside/secret", tarfile.LNKTYPE)
        .link("sym", "real")
        .link("h-sym", "sym", tarfile.LNKTYPE)
        .dir("d")
        .link("h-dir", "d", tarfile.LNKTYPE)
        .link("h-missing", "nothing", tarfile.LNKTYPE)
        .file("real", b"r")
        .link("h-real", "real", tarfile.LNKTYPE)
        .close()
    )
    assert restore_checked(tmp_path, archive, dest) == 6
    assert (passwd.read_bytes(), passwd.stat().st_nlink) == before
    linked = {(p.lstat().st_dev, p.lstat().st_ino) for p in dest.rglob("*")}
    assert (passwd.stat().st_dev, passwd.stat().st_ino) not in linked
    assert ((outside / "secret").stat().st_dev, (outside / "secret").stat().st_ino) not in linked
    assert (dest / "h-real").stat().st_ino == (dest / "real").stat().st_ino
    assert sorted(p.name for p in dest.iterdir()) == ["d", "h-real", "real", "sym"]


def test_device_nodes_and_fifos_are_skipped(tmp_path: Path, dest: Path) -> None:
    archive = (
        Crafted(tmp_path / "a.tar.gz")
        .node("null2", tarfile.CHRTYPE)
        .node("sda9", tarfile.BLKTYPE)
        .node("pipe", tarfile.FIFOTYPE)
        .file("after", b"still restored")
        .close()
    )
    assert restore_checked(tmp_path, archive, dest) == 3
    assert sorted(p.name for p in dest.iterdir()) == ["after"]


def test_setuid_and_setgid_bits_are_stripped(tmp_path: Path, dest: Path) -> None:
    archive = (
        Crafted(tmp_path / "a.tar.gz")
        .file("suid", b"#!/bin/sh\n", mode=0o4755)
        .file("sgid", b"#!/bin/sh\n", mode=0o2750)
        .dir("sticky", mode=0o1777)
        .close()
    )
    restore_checked(tmp_path, archive, dest)
    assert (dest / "suid").stat().st_mode & 0o7777 == 0o755
    assert (dest / "sgid").stat().st_mode & 0o7777 == 0o750
    assert (dest / "sticky").stat().st_mode & 0o7777 == 0o777


def test_names_that_differ_by_a_trailing_slash(tmp_path: Path, dest: Path) -> None:
    archive = (
        Crafted(tmp_path / "a.tar.gz", fmt=tarfile.GNU_FORMAT)
        .file("a", b"file first")
        .dir("a/")
        .file("a/x", b"inside a")
        .dir("b/")
        .file("b/y", b"inside b")
        .file("b", b"a file over a full directory")
        .file("c", b"after the refused file")
        .close()
    )
    assert restore_checked(tmp_path, archive, dest) == 1
    assert (dest / "c").read_bytes() == b"after the refused file"
    assert (dest / "a" / "x").read_bytes() == b"inside a"
    assert (dest / "b" / "y").read_bytes() == b"inside b"


def test_existing_symlinks_in_dest_are_never_written_through(
    tmp_path: Path, dest: Path, outside: Path
) -> None:
    (dest / "dirlink").symlink_to(outside)
    (dest / "filelink").symlink_to(outside / "secret")
    (dest / "deep").mkdir()
    (dest / "deep" / "hop").symlink_to("../../outside")
    archive = (
        Crafted(tmp_path / "a.tar.gz")
        .file("dirlink/evil", b"x")
        .file("filelink", b"replaces the link, not its target")
        .file("deep/hop/secret", b"overwritten")
        .dir("deep/hop")  # an explicit directory replaces the symlink itself
        .file("deep/hop/new", b"inside")
        .close()
    )
    assert restore_checked(tmp_path, archive, dest) == 2
    assert (outside / "secret").read_text() == "outside file"
    assert not (outside / "evil").exists()
    assert not (dest / "filelink").is_symlink()
    assert (dest / "filelink").read_bytes() == b"replaces the link, not its target"
    assert (dest / "dirlink").is_symlink()
    assert (dest / "deep" / "hop" / "new").read_bytes() == b"inside"


def test_corrupt_gzip_fails_cleanly(tmp_path: Path, dest: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(200_000))
    good = tmp_path / "good.tar.gz"
    archive_to_file(src, good)
    data = bytearray(good.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(RestoreError) as err:
        restore_archive_file(bad, dest)
    assert "\n" not in str(err.value)
    assert not list(dest.rglob(".wingsbak-restore-*"))
    # Every file under a final name is whole. (Its bytes can only be trusted when the gzip
    # layer caught the damage before it: a stream checked by CRC alone fails at its end.)
    for p in dest.iterdir():
        assert p.stat().st_size == 200_000


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_archive_fails_cleanly(tmp_path: Path, dest: Path, cut: float) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(2_000_000))
    good = tmp_path / "good.tar.gz"
    archive_to_file(src, good)
    short = tmp_path / "short.tar.gz"
    short.write_bytes(good.read_bytes()[: int(good.stat().st_size * cut)])
    with pytest.raises(RestoreError, match=r"truncated|ended|end"):
        restore_archive_file(short, dest)
    assert list(dest.iterdir()) == []  # no half-written file, not even a temporary one


def test_tar_without_end_marker_and_not_gzip_fail(tmp_path: Path, dest: Path) -> None:
    raw = tmp_path / "raw.tar"
    with tarfile.open(raw, "w") as t:
        info = tarfile.TarInfo("f")
        info.size = 3
        t.addfile(info, __import__("io").BytesIO(b"abc"))
    body = raw.read_bytes()[:1024]  # header and data, no end-of-archive blocks
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gzip.compress(body))
    with pytest.raises(RestoreError, match="end-of-archive"):
        restore_archive_file(cut, dest)
    plain = tmp_path / "plain.tar.gz"
    plain.write_bytes(raw.read_bytes())
    with pytest.raises(RestoreError):
        restore_archive_file(plain, dest)
