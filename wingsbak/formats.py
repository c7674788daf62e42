"""The names a configuration picks an archive's format by: compression levels and checksum
types. A leaf, importing nothing, so that the configuration (which checks them) and the
archive engine (which uses them: :mod:`wingsbak.archive.codecs`,
:mod:`wingsbak.archive.checksum`) share one definition without the one importing the other."""

from __future__ import annotations

# Wings' compression levels (``system.backups.compression_level``).
NONE = "none"
BEST_SPEED = "best_speed"
BEST_COMPRESSION = "best_compression"
COMPRESSION_LEVELS = (NONE, BEST_SPEED, BEST_COMPRESSION)

# The digests a backup's checksum may be (``system.backups.checksum``), in the order a
# sidecar or checksum object is looked for.
CHECKSUM_TYPES = ("sha1", "sha256")
