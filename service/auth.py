"""Who is asking: API keys (``Authorization: Bearer <key>``), their tenant and their scopes.

Authentication is on as soon as one key exists: a key created with ``lipwass keys create`` (in
the database, hashed) or one given in ``LIPWASS_API_KEYS`` (the compose stack's ``.env``). With
no key at all, every request is the ``default`` tenant with every scope: the loopback-only
embedded service, which ``lipwass serve`` refuses to expose on another address without keys
unless ``--insecure`` is given.

Scopes: ``read`` (GET routes), ``write`` (uploads, estimates, cancel, delete), ``admin``
(``/metrics`` when it is not public). A tenant's datasets, estimates and idempotency keys are
invisible to other tenants: their ids answer 404.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import threading
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from service.problems import ProblemError
from service.store import DEFAULT_TENANT, Database
from service.store import keys as key_rows

SCOPES = ("read", "write", "admin")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
MIN_ENV_SECRET = 32


@dataclass(frozen=True)
class Principal:
    """The caller: its tenant, its scopes, and the key it used (None: authentication is off)."""

    tenant: str
    scopes: frozenset[str]
    key_id: str | None = None

    def require(self, scope: str) -> None:
        """403 unless this caller has ``scope``."""
        if scope not in self.scopes:
            raise ProblemError(
                "forbidden",
                f"this API key's scopes ({', '.join(sorted(self.scopes)) or 'none'}) do not "
                f"include {scope!r}, which this request needs",
            )


#: Every request when no key is configured.
OPEN = Principal(DEFAULT_TENANT, frozenset(SCOPES))


def parse_scopes(text: str) -> tuple[str, ...]:
    """``read,write`` or ``read+write`` → ('read', 'write'); ValueError names an unknown one."""
    got = tuple(s for s in re.split(r"[,+ ]+", text.strip()) if s)
    unknown = [s for s in got if s not in SCOPES]
    if unknown or not got:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {text!r}")
    return tuple(s for s in SCOPES if s in got)


def check_tenant(name: str) -> str:
    if not TENANT_RE.match(name):
        raise ValueError(
            f"tenant {name!r}: 1-100 characters, lower-case letters, digits, '_', '.', '-'"
        )
    return name


@dataclass(frozen=True)
class EnvKey:
    """A key from ``LIPWASS_API_KEYS``: ``tenant:scope+scope:secret``."""

    tenant: str
    scopes: frozenset[str]
    secret_sha256: str
    index: int


def parse_env_keys(text: str | None) -> list[EnvKey]:
    """Entries separated by commas or whitespace; ValueError says which entry is wrong."""
    out = []
    for i, entry in enumerate(e for e in re.split(r"[,\s]+", text or "") if e):
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"LIPWASS_API_KEYS entry {i + 1}: expected tenant:scopes:secret")
        tenant, scopes, secret = parts
        if len(secret) < MIN_ENV_SECRET:
            raise ValueError(
                f"LIPWASS_API_KEYS entry {i + 1}: the secret needs at least {MIN_ENV_SECRET} "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        out.append(
            EnvKey(
                check_tenant(tenant),
                frozenset(parse_scopes(scopes)),
                key_rows.digest(secret),
                i + 1,
            )
        )
    return out


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="lipwass"'}
    )


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`.

    Database keys are looked up by id and cached for ``cache_s`` seconds, so a revocation takes
    effect within that time on every API process; whether any key exists is cached alike.
    """

    def __init__(self, db: Database, env_keys: list[EnvKey], cache_s: float = 5.0) -> None:
        self.db = db
        self.env_keys = env_keys
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._enabled: tuple[bool, float] | None = None
        self._rows: dict[str, tuple[Principal | None, str | None, float]] = {}
        with contextlib.suppress(SQLAlchemyError):  # primed now, so that a store down later
            _ = self.enabled  # keeps the answer it had (see ``enabled``)

    @property
    def enabled(self) -> bool:
        """Whether any key exists (then every request but the open routes needs one).

        Once on, it stays on for the life of the process: revoking the last key locks every
        client out instead of opening the service to anyone (a restart reads it afresh).
        """
        if self.env_keys:
            return True
        now = time.monotonic()
        with self._lock:
            cached = self._enabled
        if cached is not None and (cached[0] or now - cached[1] < self.cache_s):
            return cached[0]
        try:
            on = key_rows.active_count(self.db) > 0
        except SQLAlchemyError:
            # The store is down: keep the last answer; never known: closed. (Routes that need
            # the store fail on their own; /metrics still scrapes with what it knew.)
            return cached[0] if cached is not None else True
        with self._lock:
            self._enabled = (on, now)
        return on

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return OPEN
        if not authorization:
            raise _unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("send the API key as 'Authorization: Bearer <key>'")
        if token.startswith(key_rows.PREFIX):
            found = self._database_key(token)
            if found is not None:
                return found
        found = self._env_key(token)
        if found is not None:
            return found
        raise _unauthorized("the API key is unknown or revoked")

    def _env_key(self, token: str) -> Principal | None:
        d = key_rows.digest(token)
        for k in self.env_keys:
            if hmac.compare_digest(d, k.secret_sha256):
                return Principal(k.tenant, k.scopes, f"env{k.index}")
        return None

    def _database_key(self, token: str) -> Principal | None:
        key_id, _, secret = token[len(key_rows.PREFIX) :].partition("_")
        if not key_id or not secret or len(key_id) > 40:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._rows.get(key_id)
        if cached is None or now - cached[2] >= self.cache_s:
            try:
                row = key_rows.get(self.db, key_id)
            except SQLAlchemyError:
                if cached is None:
                    raise ProblemError(
                        "not-ready", "the key store cannot be reached; retry shortly"
                    ) from None
                fresh = cached  # the store is down: the last answer stands until it is back
            else:
                if row is None or row.revoked_at is not None:
                    fresh = (None, None, now)
                else:
                    holder = Principal(row.tenant, frozenset(row.scopes.split(",")), row.id)
                    fresh = (holder, row.secret_sha256, now)
            cached = fresh
            with self._lock:
                if len(self._rows) > 10_000:  # unknown ids must not grow the cache forever
                    self._rows.clear()
                self._rows[key_id] = cached
        who, expected, _ = cached
        if who is None or expected is None:
            return None
        return who if hmac.compare_digest(key_rows.digest(secret), expected) else None
