"""POSTs that connect only to an address the SSRF guard checked (no DNS rebinding between check and call).

`check_url` resolves the host and vets every address; a plain HTTP client would then resolve the name
again, and a hostile DNS server can answer with an inside address the second time. Here the socket goes
to the vetted address, while everything else keeps the URL's name: the Host header, TLS SNI and the
certificate check. Knows requests and urllib3, nothing of webhooks.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


def _pinned(connection: type[HTTPConnection], address: str) -> type[HTTPConnection]:
    class Pinned(connection):  # type: ignore[valid-type, misc]
        def _new_conn(self) -> socket.socket:
            name, self._dns_host = self._dns_host, address  # only the socket uses the address
            try:
                return super()._new_conn()
            finally:
                self._dns_host = name

    return Pinned


class PinnedAdapter(HTTPAdapter):
    """A transport whose connections, to whatever host, open a socket to `address`."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        plain = type("PinnedPool", (HTTPConnectionPool,), {"ConnectionCls": _pinned(HTTPConnection, self.address)})
        tls = type("PinnedTLSPool", (HTTPSConnectionPool,), {"ConnectionCls": _pinned(HTTPSConnection, self.address)})
        self.poolmanager.pool_classes_by_scheme = {"http": plain, "https": tls}


def post_pinned(url: str, address: str, **kwargs: Any) -> requests.Response:
    """`requests.post(url, **kwargs)`, its socket connected to `address`. Proxies from the environment are
    not used (a proxy would resolve the name itself); its CA bundle (REQUESTS_CA_BUNDLE) still is."""
    kwargs.setdefault("verify", os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True)
    with requests.Session() as session:
        session.trust_env = False
        adapter = PinnedAdapter(address)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session.post(url, **kwargs)


def post_to_first(url: str, addresses: list[str], **kwargs: Any) -> requests.Response:
    """`post_pinned` to each address in turn until one connects (an IPv6 address without a route, say)."""
    for address in addresses[:-1]:
        try:
            return post_pinned(url, address, **kwargs)
        except requests.ConnectionError:
            continue
    return post_pinned(url, addresses[-1], **kwargs)
