"""Where a sparse file's data is: found with ``SEEK_DATA``/``SEEK_HOLE``, so that a backup
never reads its holes (``truncate -s 1T`` costs a few ``lseek`` calls, not a terabyte of
zeros read, compressed and restored as real blocks)."""

from __future__ import annotations

import errno
import os

# Regions kept per file; past that, holes shorter than a growing minimum are archived as data
# (zeros), so a file of a million tiny holes costs bounded memory and a bounded map.
MAX_REGIONS = 1 << 18
_FIRST_MIN_HOLE = 64 * 1024

Regions = list[tuple[int, int]]  # (offset, length) of each data region, in order


def may_have_holes(st: os.stat_result) -> bool:
    """Fewer blocks allocated than the size needs: worth asking where the holes are."""
    return st.st_blocks * 512 < st.st_size


def data_regions(fd: int, size: int, max_regions: int = MAX_REGIONS) -> Regions | None:
    """The data regions of the first ``size`` bytes of ``fd``, then ``(size, 0)`` (as GNU
    tar ends its map), or None when the file has no hole there after all or the file system
    cannot say (then it is read whole, as any file)."""
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) >= size:
            return None
    except OSError:
        return None
    regions: Regions = []
    min_hole = 0
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from here to the end
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if regions and start - sum(regions[-1]) < min_hole:
            regions[-1] = (regions[-1][0], end - regions[-1][0])
        else:
            regions.append((start, end - start))
        if len(regions) > max_regions:
            min_hole = max(2 * min_hole, _FIRST_MIN_HOLE)
            regions = _merge(regions, min_hole)
        offset = end
    regions.append((size, 0))
    return regions


def _merge(regions: Regions, min_hole: int) -> Regions:
    """``regions`` with every hole shorter than ``min_hole`` turned into data."""
    merged: Regions = [regions[0]]
    for start, length in regions[1:]:
        last_start, last_length = merged[-1]
        if start - (last_start + last_length) < min_hole:
            merged[-1] = (last_start, start + length - last_start)
        else:
            merged.append((start, length))
    return merged


def stored_size(regions: Regions) -> int:
    return sum(length for _, length in regions)
