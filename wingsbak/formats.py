"""The names a configuration picks an archive's format by (compression levels, checksum
types), and the panel's names of where a backup goes (its adapters). A leaf, importing
nothing, so that the configuration (which checks them) and the archive engine (which uses
them: :mod:`wingsbak.archive.codecs`, :mod:`wingsbak.archive.checksum`) share one definition
without the one importing the other."""

from __future__ import annotations

# Wings' compression levels (``system.backups.compression_level``).
NONE = "none"
BEST_SPEED = "best_speed"
BEST_COMPRESSION = "best_compression"
COMPRESSION_LEVELS = (NONE, BEST_SPEED, BEST_COMPRESSION)

# The digests a backup's checksum may be (``system.backups.checksum``), in the order a
# sidecar or checksum object is looked for.
CHECKSUM_TYPES = ("sha1", "sha256")

# The panel's adapters: ``wings`` leaves the place to the node (``system.backups.store``),
# ``s3`` is the panel's own bucket, through pre-signed links.
WINGS_ADAPTER = "wings"
S3_ADAPTER = "s3"
ADAPTERS = (WINGS_ADAPTER, S3_ADAPTER)
