"""The SSRF guard for outbound webhook URLs: http(s) only, and no host that resolves to a loopback,
link-local, private, shared, reserved or otherwise non-global address (IPv4, IPv6 and IPv4-mapped forms),
unless an operator allow-list names it. Numeric forms such as `127.1`, `2130706433` and `0x7f000001`
are resolved the way the socket layer would resolve them, so they cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURL(ValueError):
    """The URL may not be called; the message says why."""


def parse_allow_list(value: str) -> list[Network]:
    """'127.0.0.1/32, 10.0.0.0/8' -> networks (single addresses become /32 or /128)."""
    return [ipaddress.ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip()]


def _effective(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"the host {host!r} does not resolve ({exc})") from None
    return [_effective(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos]


def check_url(url: str, allow: list[Network] | None = None) -> list[Address]:
    """Raise UnsafeURL unless every address the URL's host resolves to may be called. Returns them."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"the scheme must be http or https, not {parts.scheme or 'missing'!r}")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("the URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("the URL's port is not valid") from None
    addresses = resolve(parts.hostname, port)
    for address in addresses:
        if any(address in network for network in allow or []):
            continue
        if not address.is_global or address.is_multicast:
            raise UnsafeURL(f"the host {parts.hostname!r} resolves to {address}, which is not a public address")
    return addresses
