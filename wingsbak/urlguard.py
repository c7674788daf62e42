"""Restore URLs: refuse those that would make the node fetch internal addresses (SSRF).

A URL is accepted when it is http(s) and every address its host resolves to is public, or
allowed by the operator (``system.backups.restore_host_allowlist``). It blocks on DNS: call
it from a worker thread (``await asyncio.to_thread(check_restore_url, url, allowlist)``).
:mod:`wingsbak.download_source` fetches an accepted URL, connected to the very addresses
checked here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ResolvedURL",
    "UnsafeURL",
    "check_restore_url",
    "resolve_restore_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """The URL may not be fetched: wrong scheme, no host, or an address that is not public.
    ``str()`` is one sentence fit for a 400 answer."""


@dataclass(slots=True, frozen=True)
class ResolvedURL:
    scheme: str  # "http" or "https"
    host: str  # as in the URL, lower case, for Host and TLS server name
    port: int
    target: str  # path and query, what goes on the request line
    addresses: tuple[str, ...]  # the checked addresses, in resolver order


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4, Teredo), if any: the
    kernel or a gateway may deliver such packets to that IPv4 address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _why_not_public(ip: IPAddress) -> str | None:
    inner = _embedded_ipv4(ip)
    if inner is not None:
        why = _why_not_public(inner)
        return f"{why} (inside {ip})" if why else None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"  # fec0::/10: deprecated, still routed inside some sites
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


def _parse_allowlist(allowlist: Iterable[str]) -> tuple[set[str], list[IPNetwork]]:
    names: set[str] = set()
    nets: list[IPNetwork] = []
    for item in allowlist:
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            names.add(item.lower().rstrip("."))
    return names, nets


def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")


def resolve_restore_url(url: str, allowlist: Iterable[str] = ()) -> ResolvedURL:
    """Parse and resolve ``url``; raise :class:`UnsafeURL` unless it is http(s) and every
    address of its host is public, or the host name or each address is in ``allowlist``
    (host names, addresses or CIDR blocks). Blocks on DNS."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"the download URL is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"the download URL must be http or https, not {scheme or 'empty'!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("the download URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("the download URL must not carry credentials")
    port = port or (443 if scheme == "https" else 80)
    names, nets = _parse_allowlist(allowlist)
    host_allowed = host.lower() in names
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"the download host {host!r} does not resolve ({exc})") from None
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0])
        ip = _address(text)
        if not host_allowed and not any(ip in net for net in nets):
            why = _why_not_public(ip)
            if why is not None:
                raise UnsafeURL(
                    f"the download host {host!r} resolves to {ip}, {why}; "
                    "add it to system.backups.restore_host_allowlist to allow it"
                )
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise UnsafeURL(f"the download host {host!r} has no address")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ResolvedURL(scheme, host.lower(), port, target, tuple(addresses))


def check_restore_url(url: str, allowlist: Iterable[str] = ()) -> None:
    """Raise :class:`UnsafeURL` unless ``url`` may be fetched (see :func:`resolve_restore_url`).
    Blocks on DNS: run it in a thread from async code."""
    resolve_restore_url(url, allowlist)
