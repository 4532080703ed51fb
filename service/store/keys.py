"""Queries on API keys: create (the secret is returned once, only its hash is kept), look up by
id, list, revoke."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, select, update

from service.store.db import Database, rowcount
from service.store.models import ApiKeyRow, utcnow

#: A key is "lw_<id>_<secret>": the id finds the row, the secret is checked against its hash.
PREFIX = "lw_"


def digest(secret: str) -> str:
    """SHA-256 of a secret. Keys are 256 random bits: no slow hash is needed against guessing."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    db: Database, tenant: str, scopes: tuple[str, ...], name: str | None = None
) -> tuple[ApiKeyRow, str]:
    """A new key of ``tenant`` with ``scopes``: (its row, the full key to hand out once)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKeyRow(
        id=key_id,
        tenant=tenant,
        scopes=",".join(scopes),
        name=name,
        secret_sha256=digest(secret),
        created_at=utcnow(),
    )
    with db.session() as s:
        s.add(row)
    return row, f"{PREFIX}{key_id}_{secret}"


def get(db: Database, key_id: str) -> ApiKeyRow | None:
    with db.session() as s:
        return s.get(ApiKeyRow, key_id)


def all_keys(db: Database) -> list[ApiKeyRow]:
    with db.session() as s:
        return list(s.execute(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).scalars())


def active_count(db: Database) -> int:
    with db.session() as s:
        q = select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
        return int(s.execute(q).scalar_one())


def revoke(db: Database, key_id: str) -> bool:
    """Revoke a key; False when there is no such active key."""
    with db.session() as s:
        res = s.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    return rowcount(res) == 1
