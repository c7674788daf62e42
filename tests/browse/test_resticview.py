"""storage/restic_view.py: a restic snapshot listed with ``restic ls --json`` (once) and read
with ``restic dump``, the real restic binary on a repository made by the restic store."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.restic_helpers import needs_restic, oracle, restic_block
from wingsbak.browse.model import NotADirectory, NotFound
from wingsbak.storage.restic import ResticStore
from wingsbak.storage.restic_view import ResticView
from wingsbak.storage.select import parse_config

pytestmark = needs_restic

SERVER = "0b5c3f1e-3a7c-4f59-9a0e-8f2d7c6b5a41"
BACKUP = "6c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


def _children(pid: int, word: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == pid and word.encode() in cmd and stat[0] != "Z":
            found.append(int(entry))
    return found


@pytest.fixture
def snapshot(tmp_path: Path) -> tuple[ResticStore, Path, str]:
    block = restic_block(tmp_path)
    store = ResticStore(
        parse_config({"system": {"backups": {"restic": block}}}).system.backups.restic,
        tmp_path / "cache",
        state_file=tmp_path / "forget.json",
    )
    assert store.start()
    root = tmp_path / "root"
    (root / "world").mkdir(parents=True)
    (root / "world" / "level.dat").write_bytes(b"\x0a" * 1000)
    (root / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    (root / "server.properties").write_text("motd=restic\n")
    os.chmod(root / "server.properties", 0o640)
    (root / "link").symlink_to("server.properties")
    # As the store backs a server up: paths relative to its root, tagged with server and backup.
    paths = ("world", "world/level.dat", "big.bin", "server.properties", "link")
    names = b"\0".join(n.encode() for n in paths)
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": block["repository"],
        "RESTIC_PASSWORD_FILE": block["password_file"],
    }
    tags = f"server:{SERVER},backup:{BACKUP}"
    subprocess.run(
        ["restic", "backup", "-q", "--files-from-raw", "-", "--tag", tags],
        input=names + b"\0",
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    found = store.find(SERVER, BACKUP)
    assert found is not None
    yield store, root, found.id
    store.stop()


def test_listing_and_reading_a_snapshot(snapshot: tuple[ResticStore, Path, str]) -> None:
    store, root, snap = snapshot
    view = ResticView(store, snap)
    assert [e.name for e in view.listdir("")] == ["big.bin", "link", "server.properties", "world"]
    props = view.stat("server.properties")
    assert (props.kind, props.size, props.mode) == ("file", 12, 0o640)
    assert abs(props.mtime - (root / "server.properties").stat().st_mtime) < 1e-6
    assert view.stat("world").kind == "dir"
    assert view.stat("link").kind == "symlink"
    assert [e.path for e in view.walk("world")] == ["world", "world/level.dat"]
    with view.open("server.properties") as f:
        assert f.read() == b"motd=restic\n"
    with view.open("big.bin") as f:
        assert f.read() == (root / "big.bin").read_bytes()
    with pytest.raises(NotFound):
        view.stat("nope")
    with pytest.raises(NotADirectory):
        view.listdir("big.bin")
    with pytest.raises(IsADirectoryError):
        view.open("link").__enter__()
    # restic's own listing is the oracle for the paths.
    block = {"repository": store.cfg.repository, "password_file": store.cfg.password_file}
    listed = oracle(block, "ls", "--json", "--no-lock", snap).stdout.decode()
    assert all(f'"path":"/{e.path}"' in listed for e in view.walk("") if e.path)


def test_closing_a_read_early_stops_restic_dump(snapshot: tuple[ResticStore, Path, str]) -> None:
    store, _root, snap = snapshot
    view = ResticView(store, snap)
    view.stat("")  # the listing's restic has finished
    with view.open("big.bin") as f:
        assert len(f.read(4096)) == 4096
        assert _children(os.getpid(), "dump")
    assert _children(os.getpid(), "dump") == []


def test_a_folder_restored_from_a_snapshot_keeps_its_symlinks(
    snapshot: tuple[ResticStore, Path, str], tmp_path: Path
) -> None:
    """A folder's listing gives its links their targets, as ``stat`` and ``walk`` do: a
    folder restored (a Move) holds its links, not a copy without them."""
    from wingsbak.browse.restore import restore_path

    store, _root, snap = snapshot
    view = ResticView(store, snap)
    assert {e.name: e.linkname for e in view.listdir("")}["link"] == "server.properties"
    dest = tmp_path / "server"
    dest.mkdir()
    restore_path(view, "", dest, ["whole"], owner=None)
    assert os.readlink(dest / "whole" / "link") == "server.properties"
    assert (dest / "whole" / "world" / "level.dat").read_bytes() == b"\x0a" * 1000
