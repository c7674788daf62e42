"""One suite every store passes, in the spirit of restic's internal/backend/test/suite.go: the
node's folder, the node's bucket (moto's server over HTTP through boto3), restic (the real
binary, a local repository) and, where a case applies to it, the panel's bucket through
pre-signed part URLs (the panel stand-in). The stores are built by tests/support/stores.py
only; each case reads what a store holds around it too (tar, gzip, boto3, the restic CLI).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import signal
import subprocess
import threading
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon_helpers import Panel, new_uuid, wait_until
from tests.support.restic_helpers import PASSWORD, needs_restic, oracle
from tests.support.stores import (
    CREATING,
    HOLDING,
    KINDS,
    LOCAL,
    NODE_BUCKET,
    PANEL_BUCKET,
    RESTIC,
    STORE_ERRORS,
    Where,
    build,
    child_command,
    job_threads,
    leftovers,
    source,
    start,
    stop,
)
from wingsbak.archive.codecs import GZIP
from wingsbak.archive.extract import extract_archive
from wingsbak.storage.base import BackupStore, LocalArchive, Outcome, Redirect, StreamedArchive

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def kinds(*which: str) -> Any:
    """Parametrize over these store kinds (restic's only where the binary is installed)."""
    return pytest.mark.parametrize(
        "where",
        [pytest.param(k, marks=[needs_restic] if k == RESTIC else [], id=k) for k in which],
        indirect=True,
    )


@pytest.fixture(scope="session")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository, copied for each case: `restic init` derives a key, slowly."""
    base = tmp_path_factory.mktemp("restic-template")
    password = base / "password"
    password.write_text(PASSWORD + "\n")
    block = {"repository": str(base / "repo"), "password_file": str(password)}
    done = oracle(block, "init")
    assert done.returncode == 0, done.stderr
    return base / "repo"


@pytest.fixture
def where(
    request: pytest.FixtureRequest, tmp_path: Path, panel: Panel
) -> Where:
    kind: str = request.param
    home = tmp_path / "store"
    home.mkdir()
    if kind == NODE_BUCKET:
        endpoint = request.getfixturevalue("moto_endpoint")
        return Where(kind, str(home), endpoint=endpoint, bucket=request.getfixturevalue("bucket"))
    if kind == RESTIC:
        repository = tmp_path / "repo"
        shutil.copytree(request.getfixturevalue("restic_template"), repository)
        password = tmp_path / "restic-password"
        password.write_text(PASSWORD + "\n")
        return Where(kind, str(home), repository=str(repository), password_file=str(password))
    return Where(kind, str(home), panel=panel.url)


@pytest.fixture
async def store(where: Where) -> AsyncIterator[BackupStore]:
    built = build(where)
    await asyncio.to_thread(start, built)
    yield built
    await stop(built)


@dataclass
class Made:
    server: str
    backup: str
    tree: Path
    outcome: Outcome


def make_tree(root: Path) -> Path:
    """A small real server tree: text, incompressible data, nesting, an empty folder, an
    executable, a symlink."""
    (root / "world" / "region").mkdir(parents=True)
    (root / "plugins" / "empty").mkdir(parents=True)
    (root / "server.properties").write_text("motd=hello\nmax-players=20\n")
    (root / "world" / "region" / "r.0.0.mca").write_bytes(os.urandom(300_000))
    (root / "world" / "level.dat").write_bytes(os.urandom(1000))
    (root / "logs").mkdir()
    (root / "logs" / "latest.log").write_text("[12:00:00] [Server thread/INFO]: Done\n" * 500)
    (root / "start.sh").write_text("#!/bin/sh\nexec java -jar server.jar\n")
    (root / "start.sh").chmod(0o750)
    (root / "latest.log").symlink_to("logs/latest.log")
    return root


def tree_of(root: Path) -> dict[str, tuple[Any, ...]]:
    """Relative path -> what it is: a folder and its mode, a file's mode and sha1, a link's
    target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                digest = hashlib.sha1(path.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode & 0o7777, digest)
    return out


async def create(store: BackupStore, where: Where, tmp_path: Path, panel: Panel) -> Made:
    server, backup = new_uuid(), new_uuid()
    tree = make_tree(tmp_path / "server" / server)
    if where.kind == PANEL_BUCKET:
        panel.register(server, backup, disk="s3")
    with job_threads() as pool:
        outcome = await store.create(source(server, backup, tree, pool))
    return Made(server, backup, tree, outcome)


async def download(store: BackupStore, made: Made) -> bytes:
    """The bytes a download link of this backup serves, as the client would receive them."""
    link = await asyncio.to_thread(store.open_download, made.server, made.backup)
    if isinstance(link, LocalArchive):
        return link.path.read_bytes()
    if isinstance(link, Redirect):
        url = await asyncio.to_thread(link.url)

        def fetch() -> bytes:
            with urllib.request.urlopen(url, timeout=30) as answer:
                return bytes(answer.read())

        body = await asyncio.to_thread(fetch)
        assert len(body) == link.size
        return body
    assert isinstance(link, StreamedArchive), link
    out = io.BytesIO()
    await asyncio.to_thread(link.write, out, threading.Event())
    return out.getvalue()


def tools_accept(archive: bytes, tmp_path: Path) -> list[str]:
    """gzip -t and tar -tzf, the real tools, on the archive; the names tar lists."""
    path = tmp_path / f"download{GZIP.suffix}"
    path.write_bytes(archive)
    gz = subprocess.run(["gzip", "-t", str(path)], capture_output=True, text=True)
    assert gz.returncode == 0, gz.stderr
    listing = subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    return [line.rstrip("/").removeprefix("./") for line in listing.stdout.splitlines()]


# -- the cases --------------------------------------------------------------------------------


@kinds(*HOLDING)
async def test_create_then_find(
    store: BackupStore, where: Where, tmp_path: Path, panel: Panel
) -> None:
    server, backup = new_uuid(), new_uuid()
    assert not await asyncio.to_thread(store.exists, server, backup)
    made = await create(store, where, tmp_path, panel)
    assert made.outcome.successful and made.outcome.checksum
    assert await asyncio.to_thread(store.exists, made.server, made.backup)
    # Another server's backup of the same uuid is not this one.
    assert not await asyncio.to_thread(store.exists, new_uuid(), made.backup)
    assert leftovers(where, made.server, made.backup)


@kinds(PANEL_BUCKET)
async def test_create_into_the_panels_bucket(
    store: BackupStore, where: Where, tmp_path: Path, panel: Panel
) -> None:
    made = await create(store, where, tmp_path, panel)
    assert made.outcome.successful and made.outcome.size > 0
    record = panel.backups[made.backup]
    assert record.upload_id is not None
    # Every part the report will name reached the panel's bucket with that ETag.
    uploaded = panel._uploads[record.upload_id].etags
    assert made.outcome.parts == [
        {"etag": etag, "part_number": n} for n, etag in sorted(uploaded.items())
    ]
    # The node keeps nothing of it: the temporary archive is gone, no lookup finds it.
    assert leftovers(where, made.server, made.backup) == []
    assert not await asyncio.to_thread(store.exists, made.server, made.backup)
    assert await asyncio.to_thread(store.open_download, made.server, made.backup) is None


@kinds(*HOLDING)
async def test_download(store: BackupStore, where: Where, tmp_path: Path, panel: Panel) -> None:
    made = await create(store, where, tmp_path, panel)
    archive = await download(store, made)
    names = set(tools_accept(archive, tmp_path))
    assert set(tree_of(made.tree)) <= names, names
    if made.outcome.checksum_type == "sha1":  # restic's is its snapshot id
        assert hashlib.sha1(archive).hexdigest() == made.outcome.checksum
        assert len(archive) == made.outcome.size


@kinds(*HOLDING)
async def test_restore_into_an_empty_folder(
    store: BackupStore, where: Where, tmp_path: Path, panel: Panel
) -> None:
    made = await create(store, where, tmp_path, panel)
    dest = tmp_path / "restored"
    dest.mkdir()
    opened = await asyncio.to_thread(store.open_restore, made.server, made.backup)
    assert opened is not None

    def restore() -> None:
        with opened as archive:
            extract_archive(archive.stream, dest, codec=archive.codec, bytes_total=archive.size)

    await asyncio.to_thread(restore)
    assert tree_of(dest) == tree_of(made.tree)


@kinds(*HOLDING)
async def test_delete(store: BackupStore, where: Where, tmp_path: Path, panel: Panel) -> None:
    made = await create(store, where, tmp_path, panel)
    kept = await create(store, where, tmp_path, panel)
    assert await asyncio.to_thread(store.delete, made.server, made.backup) is True
    assert not await asyncio.to_thread(store.exists, made.server, made.backup)
    assert await asyncio.to_thread(store.open_download, made.server, made.backup) is None
    assert await asyncio.to_thread(store.open_restore, made.server, made.backup) is None
    # Deleting again: "none here", not an error.
    assert await asyncio.to_thread(store.delete, made.server, made.backup) is False
    assert await asyncio.to_thread(store.exists, kept.server, kept.backup)
    # Gone for good, not only hidden from this store object (restic forgets in the background).
    await wait_until(
        lambda: leftovers(where, made.server, made.backup) == [], "the backup gone", timeout=60
    )


@kinds(*HOLDING)
async def test_a_duplicate_backup_uuid_is_held(
    store: BackupStore, where: Where, tmp_path: Path, panel: Panel
) -> None:
    made = await create(store, where, tmp_path, panel)
    assert await asyncio.to_thread(store.holds, made.server, made.backup)
    assert not await asyncio.to_thread(store.holds, made.server, new_uuid())
    if where.kind in (LOCAL, RESTIC):  # they look at every server's backups cheaply
        assert await asyncio.to_thread(store.holds, new_uuid(), made.backup)


def missing(where: Where, tmp_path: Path) -> Where:
    """The same store with its folder, bucket, repository or panel not there."""
    if where.kind in (LOCAL, PANEL_BUCKET):
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the backup folder should be\n")
        return Where(where.kind, str(blocker / "home"))
    if where.kind == NODE_BUCKET:
        return Where(where.kind, where.home, endpoint=where.endpoint, bucket="no-such-bucket")
    # A folder that holds no repository (a mistyped path to an existing one).
    stray = tmp_path / "not-a-repository"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a restic repository\n")
    return Where(where.kind, where.home, repository=str(stray), password_file=where.password_file)


MISSING_SAYS = {
    LOCAL: "not-a-folder",
    NODE_BUCKET: "S3 bucket 'no-such-bucket' does not exist",
    RESTIC: "not-a-repository",
    PANEL_BUCKET: "needs a panel",
}


@kinds(*KINDS)
async def test_a_missing_place_gives_the_stores_error(
    where: Where, tmp_path: Path, panel: Panel
) -> None:
    gone = missing(where, tmp_path)
    store = build(gone)
    try:
        await asyncio.to_thread(start, store)
        server, backup = new_uuid(), new_uuid()
        tree = make_tree(tmp_path / "server" / server)
        with job_threads() as pool, pytest.raises(STORE_ERRORS[where.kind]) as raised:
            await store.create(source(server, backup, tree, pool))
        assert MISSING_SAYS[where.kind] in str(raised.value), str(raised.value)
        # A lookup answers "none here" or the same error: never a backup, never a crash.
        try:
            found = await asyncio.to_thread(store.exists, server, backup)
        except STORE_ERRORS[where.kind]:
            found = False
        assert found is False
    finally:
        await stop(store)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@kinds(*KINDS)
async def test_recover_after_a_kill_mid_create(
    where: Where, tmp_path: Path, panel: Panel
) -> None:
    server, backup = new_uuid(), new_uuid()
    tree = tmp_path / "server" / server
    (tree / "world").mkdir(parents=True)
    for i in range(2):  # 4 MiB at the child's 2 MiB/s: a second or more left when it stops
        (tree / "world" / f"r.{i}.0.mca").write_bytes(os.urandom(2 * MIB))
    env = {**os.environ, "WINGSBAK_FAILPOINT": f"{CREATING}:pause", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "child.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            child_command(where, server, backup, tree, MIB), stdout=out, stderr=out, env=env
        )
    try:
        await wait_until(
            lambda: child.poll() is not None or process_state(child.pid) == "T",
            "the backup to stop at the failpoint",
            timeout=60,
        )
        assert child.poll() is None, log.read_text()
        # The kill lands on a store that holds part of the backup: a temporary archive, an
        # open multipart upload; restic's upload goes on meanwhile, and its snapshot is saved
        # before the kill.
        await wait_until(
            lambda: leftovers(where, server, backup) != [], "a partial backup", timeout=60
        )
    finally:
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL, log.read_text()

    store = build(where)
    try:
        await asyncio.to_thread(start, store)
        outcome = await asyncio.to_thread(store.recover, server, backup, {})
        assert outcome is None  # the backup died: nothing to report as made
        await wait_until(
            lambda: leftovers(where, server, backup) == [], "no orphan left", timeout=60
        )
        assert not await asyncio.to_thread(store.exists, server, backup)
    finally:
        await stop(store)
