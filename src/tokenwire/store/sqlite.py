"""Conversations in SQLite (the default): survives a restart, one file, no server.

All SQLite calls run on one worker thread, so the event loop never blocks on
disk and the connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from .base import Message

__all__ = ["SQLiteConversationStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    system TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT,
    extra TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (conversation_id, idx)
);
"""


class SQLiteConversationStore:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenwire-sqlite")
        self._db: sqlite3.Connection | None = None
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _history(self, conversation_id: str) -> list[Message]:
        assert self._db is not None
        row = self._db.execute("SELECT system FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            return []
        out: list[Message] = []
        if row[0] is not None:
            out.append({"role": "system", "content": row[0]})
        for role, content, extra in self._db.execute(
            "SELECT role, content, extra FROM messages WHERE conversation_id = ? ORDER BY idx",
            (conversation_id,),
        ):
            message: Message = orjson.loads(extra) if extra else {}
            message["role"] = role
            message["content"] = orjson.loads(content[1:]) if content and content[0] == "\x00" else content
            out.append(message)
        return out

    def _append(self, conversation_id: str, messages: list[Message], system: str | None) -> None:
        assert self._db is not None
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO conversations (id, system, created, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated = excluded.updated, "
                "system = COALESCE(excluded.system, conversations.system)",
                (conversation_id, system, now, now),
            )
            (start,) = db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM messages WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            rows = []
            for i, m in enumerate(messages):
                content = m.get("content")
                if content is not None and not isinstance(content, str):
                    content = "\x00" + orjson.dumps(content).decode()  # parts list, tagged
                extra = {k: v for k, v in m.items() if k not in ("role", "content")}
                rows.append(
                    (
                        conversation_id,
                        start + i,
                        m["role"],
                        content,
                        orjson.dumps(extra).decode() if extra else None,
                        now,
                    )
                )
            db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite has already rolled back on some errors (SQLITE_FULL): keep the cause
                db.execute("ROLLBACK")
            raise

    def _delete(self, conversation_id: str) -> bool:
        assert self._db is not None
        self._db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
        cur = self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return cur.rowcount > 0

    async def history(self, conversation_id: str) -> list[Message]:
        return await self._run(self._history, conversation_id)

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> None:
        await self._run(self._append, conversation_id, messages, system)

    async def delete(self, conversation_id: str) -> bool:
        return await self._run(self._delete, conversation_id)

    async def aclose(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)
