"""Webhook signing secrets sealed at rest: AES-256-GCM under operator keys (`CANVAS_WEBHOOK_SEALING_KEYS`:
comma-separated base64 32-byte keys; the first seals, every one unseals, so a key can be rotated in).

The database then holds `sealed:v1:<base64(nonce | ciphertext | tag)>`, useless without a key; the API and
the webhook worker see the plain secret, since they must show it once and sign with it. Without keys (the
embedded default) secrets are stored plain, and plain values are always read as they are, so sealing can
be turned on over existing rows (`canvas webhooks seal` rewrites them). A process sets its keys with
`configure(settings.webhook_sealing_keys)`; one that has not, uses `Settings.from_env()`'s. Knows SQLAlchemy
types, the cryptography package and Settings; nothing else of the service.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import String
from sqlalchemy.types import TypeDecorator

from shared.settings import Settings

PREFIX = "sealed:v1:"
ENV = "CANVAS_WEBHOOK_SEALING_KEYS"
_keys: list[AESGCM] | None = None  # None: not configured yet (the environment's settings on first use)
_lock = threading.Lock()


class SealingError(RuntimeError):
    """A sealed value that no configured key opens, or a malformed key."""


def parse_keys(spec: str) -> list[AESGCM]:
    keys = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            raw = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise SealingError(f"{ENV}: a key is not base64") from None
        if len(raw) != 32:
            raise SealingError(f"{ENV}: each key must be 32 bytes (base64 of 32 random bytes), got {len(raw)}")
        keys.append(AESGCM(raw))
    return keys


def configure(spec: str) -> None:
    """Use these keys in this process from now on ("" : store plain)."""
    global _keys
    parsed = parse_keys(spec)
    with _lock:
        _keys = parsed


def _current() -> list[AESGCM]:
    global _keys
    with _lock:
        if _keys is None:
            _keys = parse_keys(Settings.from_env().webhook_sealing_keys)
        return _keys


def new_key() -> str:
    """A fresh key, as the setting takes it."""
    return base64.b64encode(os.urandom(32)).decode()


def seal(value: str) -> str:
    keys = _current()
    if not keys or value.startswith(PREFIX):
        return value
    nonce = os.urandom(12)
    sealed = keys[0].encrypt(nonce, value.encode(), PREFIX.encode())
    return PREFIX + base64.b64encode(nonce + sealed).decode()


def unseal(stored: str) -> str:
    if not stored.startswith(PREFIX):
        return stored
    blob = base64.b64decode(stored[len(PREFIX) :])
    for key in _current():
        try:
            return key.decrypt(blob[:12], blob[12:], PREFIX.encode()).decode()
        except InvalidTag:
            continue
    raise SealingError(f"a webhook secret is sealed with a key that {ENV} does not hold")


class SealedString(TypeDecorator[str]):
    """A string column whose values are sealed on the way in and unsealed on the way out."""

    impl = String(255)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else seal(value)

    def process_result_value(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else unseal(value)
