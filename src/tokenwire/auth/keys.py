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
    "KEY_PREFIX",
    "KeyRecord",
    "KeyStore",
    "MemoryKeyStore",
    "SQLiteKeyStore",
    "generate_key",
    "hash_key",
    "new_record",
    "open_key_store",
]

KEY_PREFIX = "tw_"
_SHOWN = 10  #: characters of a key kept in clear to recognise it in listings ("tw_" + 7)


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

    async def add_usage(
        self, key_id: str, prompt_tokens: int, completion_tokens: int, cost_usd: float, requests: int = 1
    ) -> None: ...

    async def aclose(self) -> None: ...


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
    last_used REAL
);
"""

_COLUMNS = (
    "id, name, hash, shown, created, rpm, tpm, budget_usd, models, revoked, "
    "requests, prompt_tokens, completion_tokens, cost_usd, last_used"
)


def _record(row: tuple[Any, ...]) -> KeyRecord:
    (id, name, h, shown, created, rpm, tpm, budget, models, revoked, req, pt, ct, cost, last) = row
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
    )


class SQLiteKeyStore:
    """Keys in the same SQLite file as conversations; every call on one worker thread."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenwire-keys")
        self._db: sqlite3.Connection | None = None
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
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
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, NULL)",
            (r.id, r.name, r.hash, r.shown, r.created, r.rpm, r.tpm, r.budget_usd, ",".join(r.models), r.revoked),
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

    def _add_usage(self, key_id: str, prompt: int, completion: int, cost: float, requests: int) -> None:
        assert self._db is not None
        self._db.execute(
            "UPDATE api_keys SET requests = requests + ?, prompt_tokens = prompt_tokens + ?, "
            "completion_tokens = completion_tokens + ?, cost_usd = cost_usd + ?, last_used = ? WHERE id = ?",
            (requests, prompt, completion, cost, time.time(), key_id),
        )

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

    async def add_usage(
        self, key_id: str, prompt_tokens: int, completion_tokens: int, cost_usd: float, requests: int = 1
    ) -> None:
        await self._run(self._add_usage, key_id, prompt_tokens, completion_tokens, cost_usd, requests)

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

    async def add_usage(
        self, key_id: str, prompt_tokens: int, completion_tokens: int, cost_usd: float, requests: int = 1
    ) -> None:
        r = self.records.get(key_id)
        if r is not None:
            r.requests += requests
            r.prompt_tokens += prompt_tokens
            r.completion_tokens += completion_tokens
            r.cost_usd += cost_usd
            r.last_used = time.time()

    async def aclose(self) -> None:
        return None


def open_key_store(db_path: str) -> SQLiteKeyStore | MemoryKeyStore:
    return MemoryKeyStore() if db_path == ":memory:" else SQLiteKeyStore(db_path)
