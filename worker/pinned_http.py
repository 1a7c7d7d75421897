"""POSTs that connect only to an address the SSRF guard checked (no DNS rebinding between check and call),
and end within an overall deadline.

`check_url` resolves the host and vets every address; a plain HTTP client would then resolve the name
again, and a hostile DNS server can answer with an inside address the second time. Here the socket goes
to the vetted address, while everything else keeps the URL's name: the Host header, TLS SNI and the
certificate check.

A per-read timeout does not bound a request: a receiver that sends one byte just before each read times
out holds it open for ever. `post_within` therefore runs a watchdog that shuts the connection's socket down
when the deadline passes, whatever phase the exchange is in, and reads at most a few hundred bytes of the
answer's body. Knows requests and urllib3, nothing of webhooks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

BODY_BYTES = 512  # how much of an answer's body is read; the rest is never received


class TotalTimeout(requests.Timeout):
    """The exchange did not end within its overall deadline."""


class Watchdog:
    """Shuts down every socket opened under it once `seconds` have passed, waking any blocked read or write.
    It holds duplicates of the sockets (same connection, own descriptors), so shutting one down can never
    hit an unrelated socket that reused a closed descriptor."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._started = time.monotonic()
        self._timer.start()

    def left(self) -> float:
        return max(0.001, self.seconds - (time.monotonic() - self._started))

    def expired(self) -> bool:
        """Whether the deadline has passed (the timer thread may not have fired yet)."""
        return self.fired or time.monotonic() - self._started >= self.seconds

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock.dup())
            if self.fired:
                self._shut(self._sockets[-1])

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _pinned(connection: type[HTTPConnection], address: str, watchdog: Watchdog | None) -> type[HTTPConnection]:
    class Pinned(connection):  # type: ignore[valid-type, misc]
        def _new_conn(self) -> socket.socket:
            name, self._dns_host = self._dns_host, address  # only the socket uses the address
            try:
                sock = super()._new_conn()
            finally:
                self._dns_host = name
            if watchdog is not None:
                watchdog.watch(sock)
            return sock

    return Pinned


class PinnedAdapter(HTTPAdapter):
    """A transport whose connections, to whatever host, open a socket to `address` (watched by `watchdog`)."""

    def __init__(self, address: str, watchdog: Watchdog | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        plain = _pinned(HTTPConnection, self.address, self.watchdog)
        tls = _pinned(HTTPSConnection, self.address, self.watchdog)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
            "https": type("PinnedTLSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
        }


def post_pinned(url: str, address: str, watchdog: Watchdog | None = None, **kwargs: Any) -> requests.Response:
    """`requests.post(url, **kwargs)`, its socket connected to `address`. Proxies from the environment are
    not used (a proxy would resolve the name itself); its CA bundle (REQUESTS_CA_BUNDLE) still is."""
    kwargs.setdefault("verify", os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True)
    with requests.Session() as session:
        session.trust_env = False
        adapter = PinnedAdapter(address, watchdog)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session.post(url, **kwargs)


def post_to_first(url: str, addresses: list[str], watchdog: Watchdog | None = None, **kwargs: Any) -> requests.Response:
    """`post_pinned` to each address in turn until one connects (an IPv6 address without a route, say).
    Under a watchdog, each address gets only the time left (its connect is not watched until it
    connects), and none is tried once the deadline has passed."""
    for index, address in enumerate(addresses):
        if watchdog is not None:
            if watchdog.expired():
                raise TotalTimeout(f"no address connected within the {watchdog.seconds:g} s deadline")
            kwargs["timeout"] = (watchdog.left(), watchdog.left())
        try:
            return post_pinned(url, address, watchdog, **kwargs)
        except requests.ConnectionError:
            if index == len(addresses) - 1:
                raise
    raise requests.ConnectionError("no address to connect to")


@dataclass(frozen=True)
class Reply:
    """What a POST got back: its status, headers and the first BODY_BYTES of its body."""

    status_code: int
    headers: Mapping[str, str]
    body_start: bytes


def post_within(url: str, addresses: list[str], seconds: float, **kwargs: Any) -> Reply:
    """`post_to_first`, the whole exchange (connecting to each address, TLS, sending, the answer's headers
    and at most BODY_BYTES of its body) within `seconds`, or TotalTimeout. Other failures raise
    requests exceptions."""
    watchdog = Watchdog(seconds)
    try:
        with post_to_first(url, addresses, watchdog, stream=True, **kwargs) as response:
            body = response.raw.read(BODY_BYTES, decode_content=False) or b""
            return Reply(response.status_code, response.headers, body)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if watchdog.expired():
            raise TotalTimeout(f"no complete answer within the {seconds:g} s deadline") from None
        if isinstance(exc, requests.RequestException):
            raise
        raise requests.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        watchdog.stop()
