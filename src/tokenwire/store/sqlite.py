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

from .base import MAX_TITLE, Message, owner_of, summary

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
        if "title" not in {row[1] for row in db.execute("PRAGMA table_info(conversations)")}:
            db.execute("ALTER TABLE conversations ADD COLUMN title TEXT")  # a database from before titles
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

    def _list(self, owner: str, limit: int) -> list[dict[str, Any]]:
        assert self._db is not None
        # ids of one owner share its prefix; open mode ("") excludes every key's ("k/...") conversations
        if owner:
            where, args = "substr(c.id, 1, ?) = ?", (len(owner), owner)
        else:
            where, args = "c.id NOT LIKE 'k/%'", ()
        rows = self._db.execute(
            "SELECT c.id, c.title, c.updated, (SELECT m.content FROM messages m WHERE m.conversation_id = c.id "
            f"AND m.role = 'user' ORDER BY m.idx LIMIT 1) FROM conversations c WHERE {where} "
            "ORDER BY c.updated DESC LIMIT ?",
            (*args, limit * 2),
        ).fetchall()
        out = []
        for cid, title, updated, first in rows:
            if owner_of(cid) != owner:
                continue  # e.g. "k/x" (no second slash) in open mode
            if first and first[0] == "\x00":
                first = orjson.loads(first[1:])
            out.append(summary(cid, title, first, updated))
        return out[:limit]

    def _set_title(self, conversation_id: str, title: str) -> bool:
        assert self._db is not None
        cur = self._db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title[:MAX_TITLE], conversation_id))
        return cur.rowcount > 0

    def _truncate(self, conversation_id: str, keep: int) -> bool:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))
            if cur.rowcount:  # the turns are numbered 0, 1, … in order (_append)
                db.execute(
                    "DELETE FROM messages WHERE conversation_id = ? AND idx >= ?", (conversation_id, max(0, keep))
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return cur.rowcount > 0

    async def truncate(self, conversation_id: str, keep: int) -> bool:
        return await self._run(self._truncate, conversation_id, keep)

    async def list(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(self._list, owner, limit)

    async def set_title(self, conversation_id: str, title: str) -> bool:
        return await self._run(self._set_title, conversation_id, title)

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
