"""Server and backup identifiers as the panel and Wings write them: canonical lower-case
UUIDs, checked before one names a file or a route's subject."""

from __future__ import annotations

import re

UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID = re.compile(UUID_PATTERN)


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID.fullmatch(value) is not None
