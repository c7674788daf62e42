"""Tar entries written into a byte stream (archive/tarread.py reads them back).

Ordinary entries (ASCII names that fit the 100-byte ustar field, sizes under 8 GiB) get a
ustar header built directly, about ten times cheaper than ``tarfile.TarInfo.tobuf``; anything
else (long or non-UTF-8 names, huge files, large ids) gets a POSIX pax header from Python's
``tarfile``, so every archive reads back with GNU tar and with ``tarfile``. A file with holes
is written as GNU tar's ``--format=posix --sparse`` writes it (pax sparse 1.0): only its data
regions are stored, after a map of where they go.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tarfile
from collections.abc import Callable
from typing import BinaryIO

from wingsbak.archive.walk import Kind, WalkEntry

BLOCK = 512
_ZEROS = bytes(BLOCK * 2)
_MAX_SIZE = 8**11 - 1
_MAX_ID = 8**7 - 1
_MAX_MTIME = 8**11 - 1
_TYPEFLAG = {Kind.FILE: b"0", Kind.DIR: b"5", Kind.SYMLINK: b"2"}
_TARFILE_TYPE = {
    Kind.FILE: tarfile.REGTYPE,
    Kind.DIR: tarfile.DIRTYPE,
    Kind.SYMLINK: tarfile.SYMTYPE,
}


class _NameCache:
    """uid/gid -> name, looked up once each."""

    def __init__(self, lookup: Callable[[int], str]) -> None:
        self._lookup = lookup
        self._names: dict[int, bytes] = {}

    def __call__(self, ident: int) -> bytes:
        name = self._names.get(ident)
        if name is None:
            try:
                text = self._lookup(ident)
            except (KeyError, OverflowError):
                text = ""
            name = text.encode("utf-8", "replace")[:31]
            self._names[ident] = name
        return name


_user_name = _NameCache(lambda uid: pwd.getpwuid(uid).pw_name)
_group_name = _NameCache(lambda gid: grp.getgrgid(gid).gr_name)


# (typeflag, uid, gid) -> the header from the type flag to the end, and its byte sum. Only
# entries without a link name use it, so its size is bounded by the owners in the tree.
_TAILS: dict[tuple[bytes, int, int], tuple[bytes, int]] = {}


def _tail(typeflag: bytes, linkname: bytes, uid: int, gid: int) -> tuple[bytes, int]:
    tail = b"".join(
        (
            typeflag,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            _user_name(uid).ljust(32, b"\0"),
            _group_name(gid).ljust(32, b"\0"),
            b"0000000\x000000000\x00",
            bytes(167),  # prefix (155) and padding (12)
        )
    )
    return tail, sum(tail)


def _ustar_header(
    name: bytes, linkname: bytes, typeflag: bytes, st: os.stat_result, size: int
) -> bytes:
    # Per entry only the name and the numeric fields change; summing just those (the zero
    # fill adds nothing) keeps the checksum cheap on trees of many small files.
    uid = st.st_uid
    gid = st.st_gid
    if linkname:
        tail, tail_sum = _tail(typeflag, linkname, uid, gid)
    else:
        key = (typeflag, uid, gid)
        cached = _TAILS.get(key)
        if cached is None:
            cached = _TAILS[key] = _tail(typeflag, b"", uid, gid)
        tail, tail_sum = cached
    fields = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (
        stat.S_IMODE(st.st_mode),
        uid,
        gid,
        size,
        int(st.st_mtime),
    )
    chksum = sum(name) + sum(fields) + tail_sum + 8 * 32
    return b"".join((name.ljust(100, b"\0"), fields, b"%06o\0 " % chksum, tail))


def _tarinfo(name: str, kind: Kind, st: os.stat_result, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = _TARFILE_TYPE[kind]
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid = st.st_uid
    info.gid = st.st_gid
    info.uname = _user_name(st.st_uid).decode("utf-8", "replace")
    info.gname = _group_name(st.st_gid).decode("utf-8", "replace")
    info.mtime = max(0, int(st.st_mtime))
    info.size = size
    return info


def _pax_header(relpath: str, linkname: str, kind: Kind, st: os.stat_result, size: int) -> bytes:
    info = _tarinfo(relpath, kind, st, size)
    info.linkname = linkname
    try:
        (relpath + linkname).encode("utf-8")
    except UnicodeEncodeError:
        # Not UTF-8: GNU tar stores the raw bytes (pax would need 'hdrcharset', which GNU tar
        # warns about); tarfile reads them back with surrogateescape.
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def entry_header(entry: WalkEntry, size: int = 0) -> bytes:
    """The header block(s) of one entry; ``size`` is the data size (files only)."""
    relpath = entry.relpath + "/" if entry.kind is Kind.DIR else entry.relpath
    st = entry.st
    if (
        len(relpath) <= 100
        and len(entry.linkname) <= 100
        and relpath.isascii()
        and entry.linkname.isascii()
        and size <= _MAX_SIZE
        and st.st_uid <= _MAX_ID
        and st.st_gid <= _MAX_ID
        and 0 <= st.st_mtime <= _MAX_MTIME
    ):
        return _ustar_header(
            relpath.encode("ascii"), entry.linkname.encode("ascii"), _TYPEFLAG[entry.kind], st, size
        )
    return _pax_header(relpath, entry.linkname, entry.kind, st, size)


# The name in the ustar header of a sparse entry, as GNU tar makes it ("%d/GNUSparseFile.%p/%f",
# with 0 for the process id): where a tool that does not read sparse entries extracts it.
_SPARSE_DIR = "GNUSparseFile.0"


def sparse_header(entry: WalkEntry, stored: int, real_size: int) -> bytes:
    """The header of a pax sparse 1.0 entry: ``stored`` bytes follow it (the map, then the
    data regions), ``real_size`` is the size of the file they make up."""
    head, _, base = entry.relpath.rpartition("/")
    fake = f"{head or '.'}/{_SPARSE_DIR}/{base}"
    if len(fake) > 100 or not fake.isascii():
        # A 'path' record would override GNU.sparse.name in GNU tar, so it must fit as is.
        fake = f"./{_SPARSE_DIR}/file"
    info = _tarinfo(fake, Kind.FILE, entry.st, stored)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": entry.relpath,
        "GNU.sparse.realsize": str(real_size),
    }
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def sparse_map(regions: list[tuple[int, int]]) -> bytes:
    """The map at the start of a sparse entry's data: the number of regions, then offset and
    length of each, one decimal number a line, padded to a whole block."""
    lines = [b"%d\n" % len(regions)]
    lines.extend(b"%d\n%d\n" % region for region in regions)
    table = b"".join(lines)
    return table + padding(len(table))


def padding(size: int) -> bytes:
    """Zero bytes that complete a data section of ``size`` bytes to a whole block."""
    rest = size % BLOCK
    return bytes(BLOCK - rest) if rest else b""


def write_end(out: BinaryIO) -> None:
    """The two zero blocks that end a tar archive."""
    out.write(_ZEROS)
