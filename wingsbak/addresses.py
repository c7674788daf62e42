"""Network addresses as the node's listener sees them: the hosts that mean every address, and
the address a client connects from. Read by the listener (wingsbak.http.server) and in front
of Wings (wingsbak.wings)."""

from __future__ import annotations

import ipaddress
from typing import Any

# Go's listener on these (Wings' api.host) takes IPv4 and IPv6 alike.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def client_address(peer: Any) -> str | None:
    """The address a connection counts against, from its peer name (None: a Unix socket)."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return str(peer[0])
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: one client, one count.
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)
