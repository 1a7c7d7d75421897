"""Stored files: how a file row is made from its bytes (uploads, and the files the Batch API writes)."""

from __future__ import annotations

import hashlib
import uuid

from shared.models import StoredFile


def new_file(tenant_id: str, purpose: str, filename: str, content: bytes) -> StoredFile:
    """A file row for `content` (not yet added to a session): id, size, sha256 and line count filled in."""
    return StoredFile(
        id="file_" + uuid.uuid4().hex[:24],
        tenant_id=tenant_id,
        purpose=purpose,
        filename=filename[:300],
        bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        lines=content.count(b"\n") + (not content.endswith(b"\n")) if content else 0,
        content=content,
    )
