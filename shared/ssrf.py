"""The SSRF guard for outbound webhook URLs: http(s) only, and no host that resolves to a loopback,
link-local, private, shared, site-local, reserved or otherwise non-global address, unless an operator
allow-list names it. IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`, IPv4-compatible
`::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address they carry; local-use
NAT64 and Teredo, whose embedded address cannot be judged, are refused. Numeric forms such as `127.1`,
`2130706433` and `0x7f000001` are resolved the way the socket layer would resolve them.

Look-ups have a deadline (`RESOLVE_TIMEOUT_SECONDS`), so a slow DNS server cannot hold the API thread that
checks a URL. Refusals name the host, never the addresses it resolved to (internal DNS stays private).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT_SECONDS = 5.0  # glibc's own default per DNS server; read at call time
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are IPv4
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated RFC 4291 form ::a.b.c.d
_OPAQUE = (
    ipaddress.ip_network("64:ff9b:1::/48"),  # RFC 8215 local-use NAT64: a private translator, any layout
    ipaddress.ip_network("2001::/32"),  # Teredo: the client address inside is obfuscated and NAT-mapped
)
_resolver: ThreadPoolExecutor


def _new_resolver() -> None:
    """getaddrinfo cannot be interrupted; look-ups run on these threads so the caller can stop waiting. One
    that hangs holds a pool thread until the system resolver gives up, never the caller's. A forked child
    (gunicorn, Celery's prefork pool) gets a pool of its own: the parent's threads do not exist there."""
    global _resolver
    _resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ssrf-dns")


_new_resolver()
os.register_at_fork(after_in_child=_new_resolver)


class UnsafeURL(ValueError):
    """The URL may not be called; the message says why."""


def parse_allow_list(value: str) -> list[Network]:
    """'127.0.0.1/32, 10.0.0.0/8' -> networks (single addresses become /32 or /128)."""
    return [ipaddress.ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip()]


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, IPv4-compatible, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """Whether a webhook may be sent to this address: a global unicast address, judged by the IPv4 address
    it carries if it carries one."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    if any(address in network for network in _OPAQUE if address.version == network.version):
        return False
    if isinstance(address, ipaddress.IPv6Address) and (address.is_site_local or address in _IPV4_COMPATIBLE):
        return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_private or address.is_loopback
    )


def resolve(host: str, port: int) -> list[Address]:
    """The host's addresses (mapped IPv4 ones as IPv4), looked up within RESOLVE_TIMEOUT_SECONDS."""
    lookup = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=RESOLVE_TIMEOUT_SECONDS)
    except LookupTimeout:
        lookup.cancel()
        raise UnsafeURL(f"the host {host!r} did not resolve within {RESOLVE_TIMEOUT_SECONDS:g} s") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"the host {host!r} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return [a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a for a in addresses]


def _allowed(address: Address, allow: list[Network]) -> bool:
    inner = embedded_ipv4(address)
    return any(
        a in network for network in allow for a in (address, inner) if a is not None and a.version == network.version
    )


def check_url(url: str, allow: list[Network] | None = None) -> list[Address]:
    """Raise UnsafeURL unless every address the URL's host resolves to may be called. Returns them, to
    connect to (so that DNS cannot answer differently between this check and the call)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[", a bracketed non-address, a netloc NFKC would change
        raise UnsafeURL(f"the URL is not valid ({exc})") from None
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
        if not _allowed(address, allow or []) and not is_public(address):
            # The answer itself is not shown: it may be an internal address the caller should not learn.
            raise UnsafeURL(f"the host {parts.hostname!r} resolves to an address that is not public")
    return addresses
