"""The demo's webhook receiver: a small HTTP server on 127.0.0.1 that keeps what it receives, and the
check of a delivery's signature, as a user's receiver does it.

The check uses the `standardwebhooks` package when it is installed (`make demo` installs it with the dev
extra), else Canvas' own signing code (shared/webhooks.py), so a plain install verifies too.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared.webhooks import sign


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


class WebhookCatcher:
    """Answers 200 to every POST and keeps them; `wait()` returns the first."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived = threading.Condition()
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with catcher.arrived:
                    catcher.deliveries.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body))
                    catcher.arrived.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-webhooks", daemon=True)

    def __enter__(self) -> WebhookCatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, timeout: float) -> Delivery | None:
        with self.arrived:
            self.arrived.wait_for(lambda: bool(self.deliveries), timeout)
            return self.deliveries[0] if self.deliveries else None


class BadSignature(ValueError):
    """The delivery's signature does not match the secret."""


def verify(secret: str, headers: dict[str, str], body: bytes) -> str:
    """Check a delivery's Standard Webhooks signature; says what checked it. Raises BadSignature."""
    try:
        from standardwebhooks import Webhook
        from standardwebhooks.webhooks import WebhookVerificationError
    except ImportError:
        expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body.decode())
        if not any(hmac.compare_digest(expected, given) for given in headers["webhook-signature"].split()):
            raise BadSignature("no signature matches the secret") from None
        return "Canvas' own signing code (standardwebhooks is not installed)"
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError as exc:
        raise BadSignature(str(exc)) from exc
    return "the standardwebhooks package"
