"""API keys: generation, hashing, lookup. Keys are random (256 bits), so a plain SHA-256 is a safe hash."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey, utcnow

KEY_PREFIX = "cvs_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its tenant, and whether it may use admin routes."""

    key_id: str
    tenant_id: str
    is_admin: bool


def create_key(session: Session, name: str, *, tenant_id: str | None = None, admin: bool = False) -> tuple[ApiKey, str]:
    """Insert a new key and return it with the plain key, which is never stored."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id="key_" + uuid.uuid4().hex[:20],
        tenant_id=tenant_id or "ten_" + uuid.uuid4().hex[:16],
        name=name,
        prefix=plain[:10],
        key_hash=hash_key(plain),
        is_admin=admin,
    )
    session.add(record)
    session.flush()
    return record, plain


def authenticate(session: Session, plain: str) -> Principal | None:
    """The principal for a key, or None if it is unknown or revoked."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plain)))
    if row is None or row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, tenant_id=row.tenant_id, is_admin=row.is_admin)


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True
