"""Gateway API keys: generated, shown once, stored only as a SHA-256 hash.

A key is ``tw_`` + 43 characters of URL-safe base64 (256 random bits), so a
plain SHA-256 is enough (no salt or slow hash is needed against guessing, and a
lookup stays one indexed query). Keys live in the conversations' SQLite file
behind :class:`KeyStore`, so another backend (Redis) can replace it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "EDITABLE",
    "KEY_PREFIX",
    "USAGE_BUCKET",
    "KeyRecord",
    "KeyStore",
    "MemoryKeyStore",
    "SQLiteKeyStore",
    "UsageRow",
    "bucket_of",
    "generate_key",
    "hash_key",
    "new_record",
    "open_key_store",
]

KEY_PREFIX = "tw_"
_SHOWN = 10  #: characters of a key kept in clear to recognise it in listings ("tw_" + 7)
USAGE_BUCKET = 60  #: seconds per row of the usage table (spend over a window is summed from these)
USAGE_RETENTION = 92 * 86400  #: seconds the usage table's rows are kept (the longest window is 90 days)
#: the fields of a key that can be changed after it was created (``KeyStore.update``)
EDITABLE = ("name", "rpm", "tpm", "budget_usd", "models", "admin")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class KeyRecord:
    id: str
    name: str
    hash: str
    shown: str  #: the first characters of the key, for listings
    created: float
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    models: list[str] = field(default_factory=list)  #: allowed model patterns; empty = any
    revoked: float | None = None
    #: may use the admin dashboard and API (``/admin``): list, create and revoke keys, see everyone's usage
    admin: bool = False
    # usage, updated at the end of each generation
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    last_used: float | None = None

    def matches(self, key: str) -> bool:
        """Constant-time comparison of a presented key with the stored hash."""
        return hmac.compare_digest(self.hash, hash_key(key))

    def public(self) -> dict[str, Any]:
        """Everything except the hash (for ``keys list --json`` and ``usage --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "key": self.shown + "…",
            "created": self.created,
            "revoked": self.revoked,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget_usd": self.budget_usd,
            "models": self.models,
            "admin": self.admin,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "last_used": self.last_used,
        }


def new_record(
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    budget_usd: float | None = None,
    models: list[str] | None = None,
    admin: bool = False,
) -> tuple[KeyRecord, str]:
    """A new key and its record; the plaintext key is returned once and never stored."""
    key = generate_key()
    record = KeyRecord(
        id="k_" + uuid.uuid4().hex[:12],
        name=name,
        hash=hash_key(key),
        shown=key[:_SHOWN],
        created=time.time(),
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget_usd,
        models=list(models or []),
        admin=admin,
    )
    return record, key


class KeyStore(Protocol):
    """Where keys and their usage live (SQLite here; Redis can implement the same)."""

    async def insert(self, record: KeyRecord) -> None: ...

    async def find(self, key_hash: str) -> KeyRecord | None:
        """The record whose hash is ``key_hash`` (revoked ones too), else ``None``."""
        ...

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def list(self) -> list[KeyRecord]: ...

    async def revoke(self, ref: str) -> list[KeyRecord]:
        """Revoke the active keys whose id, name or shown prefix is ``ref``; return them."""
        ...

    async def has_keys(self) -> bool:
        """Whether any key was ever created (a revoked last key must not reopen the gateway)."""
        ...

    async def update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Change some of a key's :data:`EDITABLE` fields (``None`` clears a limit); the new record."""
        ...

    async def add_usage(
        self,
        key_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        requests: int = 1,
        model: str | None = None,
        bucket: int | None = None,
    ) -> None:
        """Add to a key's totals and, with ``model``, to its row of that model and minute (``bucket``)."""
        ...

    async def usage_since(self, since: float, step: int = USAGE_BUCKET) -> list[UsageRow]:
        """Every key's and model's usage from the bucket holding ``since`` on, summed per ``step``
        seconds (a multiple of :data:`USAGE_BUCKET`; each row's first field is its step's start)."""
        ...

    async def aclose(self) -> None: ...


#: one row of the usage table: (bucket start, key id, model, requests, prompt, completion, cost)
UsageRow = tuple[int, str, str, int, int, int, float]


def bucket_of(t: float) -> int:
    """The start of the usage bucket holding Unix time ``t``."""
    return int(t // USAGE_BUCKET) * USAGE_BUCKET


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    shown TEXT NOT NULL,
    created REAL NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    budget_usd REAL,
    models TEXT NOT NULL DEFAULT '',
    revoked REAL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    last_used REAL,
    admin INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS usage_buckets (
    bucket INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, key_id, model)
);
"""

_COLUMNS = (
    "id, name, hash, shown, created, rpm, tpm, budget_usd, models, revoked, "
    "requests, prompt_tokens, completion_tokens, cost_usd, last_used, admin"
)


def _record(row: tuple[Any, ...]) -> KeyRecord:
    (id, name, h, shown, created, rpm, tpm, budget, models, revoked, req, pt, ct, cost, last, admin) = row
    return KeyRecord(
        id=id,
        name=name,
        hash=h,
        shown=shown,
        created=created,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget,
        models=[m for m in models.split(",") if m],
        revoked=revoked,
        requests=req,
        prompt_tokens=pt,
        completion_tokens=ct,
        cost_usd=cost,
        last_used=last,
        admin=bool(admin),
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a key table made by an older tokenwire up to date (it had no ``admin`` column)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
    if "admin" not in columns:
        db.execute("ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")


class SQLiteKeyStore:
    """Keys in the same SQLite file as conversations; every call on one worker thread."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenwire-keys")
        self._db: sqlite3.Connection | None = None
        self._pruned = 0.0  #: when old usage rows were last dropped
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        _migrate(db)
        self._db = db

    def call(self, fn: Any, *args: Any) -> Any:
        """Run one of the ``_`` methods synchronously (for the CLI)."""
        return self._pool.submit(fn, *args).result()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- synchronous core (worker thread) -----------------------------------
    def _insert(self, r: KeyRecord) -> None:
        assert self._db is not None
        self._db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, NULL, ?)",
            (
                r.id,
                r.name,
                r.hash,
                r.shown,
                r.created,
                r.rpm,
                r.tpm,
                r.budget_usd,
                ",".join(r.models),
                r.revoked,
                int(r.admin),
            ),
        )

    def _find(self, key_hash: str) -> KeyRecord | None:
        assert self._db is not None
        row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE hash = ?", (key_hash,)).fetchone()
        return _record(row) if row else None

    def _get(self, key_id: str) -> KeyRecord | None:
        assert self._db is not None
        row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _record(row) if row else None

    def _list(self) -> list[KeyRecord]:
        assert self._db is not None
        return [_record(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created")]

    def _revoke(self, ref: str) -> list[KeyRecord]:
        assert self._db is not None
        found = [
            r
            for r in self._list()
            if r.revoked is None and (ref in (r.id, r.name, r.shown) or (len(ref) >= 8 and r.shown.startswith(ref)))
        ]
        now = time.time()
        for r in found:
            self._db.execute("UPDATE api_keys SET revoked = ? WHERE id = ?", (now, r.id))
            r.revoked = now
        return found

    def _budgeted(self) -> int:
        """How many active keys have a budget."""
        assert self._db is not None
        sql = "SELECT COUNT(*) FROM api_keys WHERE budget_usd IS NOT NULL AND revoked IS NULL"
        return int(self._db.execute(sql).fetchone()[0])

    def _has_keys(self) -> bool:
        assert self._db is not None
        return self._db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def _update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        assert self._db is not None
        values = _column_values(changes)
        if values:
            sets = ", ".join(f"{name} = ?" for name in values)
            self._db.execute(f"UPDATE api_keys SET {sets} WHERE id = ?", (*values.values(), key_id))
        return self._get(key_id)

    def _add_usage(
        self,
        key_id: str,
        prompt: int,
        completion: int,
        cost: float,
        requests: int,
        model: str | None,
        bucket: int | None,
    ) -> None:
        assert self._db is not None
        now = time.time()
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute(
                "UPDATE api_keys SET requests = requests + ?, prompt_tokens = prompt_tokens + ?, "
                "completion_tokens = completion_tokens + ?, cost_usd = cost_usd + ?, last_used = ? WHERE id = ?",
                (requests, prompt, completion, cost, now, key_id),
            )
            if model is not None:
                db.execute(
                    "INSERT INTO usage_buckets VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, key_id, model) DO "
                    "UPDATE SET requests = requests + excluded.requests, prompt_tokens = prompt_tokens + "
                    "excluded.prompt_tokens, completion_tokens = completion_tokens + excluded.completion_tokens, "
                    "cost_usd = cost_usd + excluded.cost_usd",
                    (bucket_of(now) if bucket is None else bucket, key_id, model, requests, prompt, completion, cost),
                )
                self._prune_usage(now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _usage_since(self, since: float, step: int) -> list[UsageRow]:
        assert self._db is not None
        sql = (
            "SELECT (bucket / ?) * ? AS b, key_id, model, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), "
            "SUM(cost_usd) FROM usage_buckets WHERE bucket >= ? GROUP BY b, key_id, model ORDER BY b"
        )
        return [tuple(r) for r in self._db.execute(sql, (step, step, bucket_of(since)))]  # type: ignore[misc]

    def _prune_usage(self, now: float) -> None:
        """Drop usage rows past :data:`USAGE_RETENTION` (at most once an hour, on a write)."""
        assert self._db is not None
        if now - self._pruned >= 3600:
            self._pruned = now
            self._db.execute("DELETE FROM usage_buckets WHERE bucket < ?", (bucket_of(now - USAGE_RETENTION),))

    # -- the KeyStore interface ---------------------------------------------
    async def insert(self, record: KeyRecord) -> None:
        await self._run(self._insert, record)

    async def find(self, key_hash: str) -> KeyRecord | None:
        return await self._run(self._find, key_hash)

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._run(self._get, key_id)

    async def list(self) -> list[KeyRecord]:
        return await self._run(self._list)

    async def revoke(self, ref: str) -> list[KeyRecord]:
        return await self._run(self._revoke, ref)

    async def has_keys(self) -> bool:
        return await self._run(self._has_keys)

    async def update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        return await self._run(self._update, key_id, changes)

    async def add_usage(
        self,
        key_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        requests: int = 1,
        model: str | None = None,
        bucket: int | None = None,
    ) -> None:
        await self._run(self._add_usage, key_id, prompt_tokens, completion_tokens, cost_usd, requests, model, bucket)

    async def usage_since(self, since: float, step: int = USAGE_BUCKET) -> list[UsageRow]:
        return await self._run(self._usage_since, since, step)

    async def aclose(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)

    def close_sync(self) -> None:
        if self._db is not None:
            self.call(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)


class MemoryKeyStore:
    """Keys for one process only (``db_path = ":memory:"`` and tests)."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.buckets: dict[tuple[int, str, str], list[Any]] = {}

    async def insert(self, record: KeyRecord) -> None:
        self.records[record.id] = record

    async def find(self, key_hash: str) -> KeyRecord | None:
        return next((r for r in self.records.values() if r.hash == key_hash), None)

    async def get(self, key_id: str) -> KeyRecord | None:
        return self.records.get(key_id)

    async def list(self) -> list[KeyRecord]:
        return list(self.records.values())

    async def revoke(self, ref: str) -> list[KeyRecord]:
        found = [r for r in self.records.values() if r.revoked is None and ref in (r.id, r.name, r.shown)]
        for r in found:
            r.revoked = time.time()
        return found

    async def has_keys(self) -> bool:
        return bool(self.records)

    async def update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        r = self.records.get(key_id)
        if r is not None:
            _column_values(changes)  # the same checks as SQLite's
            for name, value in changes.items():
                setattr(r, name, list(value or []) if name == "models" else value)
        return r

    async def add_usage(
        self,
        key_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        requests: int = 1,
        model: str | None = None,
        bucket: int | None = None,
    ) -> None:
        r = self.records.get(key_id)
        if r is not None:
            r.requests += requests
            r.prompt_tokens += prompt_tokens
            r.completion_tokens += completion_tokens
            r.cost_usd += cost_usd
            r.last_used = time.time()
        if model is not None:
            b = bucket_of(time.time()) if bucket is None else bucket
            row = self.buckets.setdefault((b, key_id, model), [0, 0, 0, 0.0])
            row[0] += requests
            row[1] += prompt_tokens
            row[2] += completion_tokens
            row[3] += cost_usd

    async def usage_since(self, since: float, step: int = USAGE_BUCKET) -> list[UsageRow]:
        start = bucket_of(since)
        sums: dict[tuple[int, str, str], list[Any]] = {}
        for (b, k, m), v in self.buckets.items():
            if b >= start:
                row = sums.setdefault((b // step * step, k, m), [0, 0, 0, 0.0])
                for i in range(4):
                    row[i] += v[i]
        return sorted((b, k, m, *v) for (b, k, m), v in sums.items())  # type: ignore[misc]

    async def aclose(self) -> None:
        return None


def _column_values(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` as SQLite column values; a field that is not :data:`EDITABLE` is a ValueError."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in EDITABLE:
            raise ValueError(f"{name!r} cannot be changed (editable: {', '.join(EDITABLE)})")
        if name == "models":
            value = ",".join(value or [])
        elif name == "admin":
            value = int(bool(value))
        out[name] = value
    return out


def open_key_store(db_path: str) -> SQLiteKeyStore | MemoryKeyStore:
    return MemoryKeyStore() if db_path == ":memory:" else SQLiteKeyStore(db_path)
