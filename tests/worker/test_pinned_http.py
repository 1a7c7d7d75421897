"""The pinned transport over real TLS: the socket goes to the given address, while SNI, the certificate
check and the Host header keep the URL's name (a self-signed certificate made with the openssl CLI)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from worker.pinned_http import post_pinned, post_to_first

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[int, Path, list[dict]]]:
    """An HTTPS server on 127.0.0.1 whose certificate names only hooks.example; records each request."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.example",
         "-addext", "subjectAltName=DNS:hooks.example", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append({"host": self.headers["Host"], "sni": names[-1] if names else None, "body": body})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []  # the server name each TLS client asked for

    def remember_sni(_sock, name, _context) -> None:
        names.append(name)

    context.sni_callback = remember_sni
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, cert, seen
    server.shutdown()


def test_https_to_a_name_goes_to_the_pinned_address_and_checks_the_certificate_for_the_name(tls_server) -> None:
    port, cert, seen = tls_server
    response = post_pinned(f"https://hooks.example:{port}/x", "127.0.0.1", data=b"hi", verify=str(cert), timeout=10)
    assert response.status_code == 204
    assert seen[-1]["host"] == f"hooks.example:{port}" and seen[-1]["body"] == b"hi"
    assert seen[-1]["sni"] == "hooks.example"


def test_a_certificate_for_another_name_is_refused(tls_server) -> None:
    port, cert, _ = tls_server
    with pytest.raises(requests.exceptions.SSLError):
        post_pinned(f"https://other.example:{port}/x", "127.0.0.1", data=b"hi", verify=str(cert), timeout=10)


def test_the_next_checked_address_is_tried_when_one_does_not_connect() -> None:
    from tests.e2e.receiver import Receiver

    receiver = Receiver()
    try:
        url = receiver.script("/next").replace("127.0.0.1", "hooks.example")
        response = post_to_first(url, ["127.0.0.2", "127.0.0.1"], data=b"x", timeout=10)  # nothing on .2
        assert response.status_code == 200 and len(receiver.at("/next")) == 1
        with pytest.raises(requests.ConnectionError):
            post_to_first(url, ["127.0.0.2"], data=b"x", timeout=10)
    finally:
        receiver.close()


def test_the_overall_deadline_covers_every_address_tried() -> None:
    """A name may resolve to many addresses that never answer a connect: the deadline bounds them all
    together (before: each got a full connect timeout, three addresses held the POST three deadlines). A
    listener whose one-place backlog is already taken drops further SYNs, so connects to it hang."""
    import socket
    import time

    from worker.pinned_http import TotalTimeout, post_within

    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the backlog; nothing accepts it
            started = time.monotonic()
            with pytest.raises(TotalTimeout):
                post_within(f"http://hooks.example:{port}/x", ["127.0.0.1"] * 5, 1.0, data=b"x")
            assert time.monotonic() - started < 3.5  # a deadline per address would take 5 s
