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

from .base import MAX_TITLE, Message, StoreCaps, Sweeper, owner_of, plan_drop_from, summary

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
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations(updated);
"""


class SQLiteConversationStore(Sweeper):
    def __init__(self, path: str, caps: StoreCaps | None = None) -> None:
        self.caps = caps or StoreCaps()
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
        if "size" not in {row[1] for row in db.execute("PRAGMA table_info(messages)")}:
            # a message's stored size (StoreCaps.max_bytes): its text, or its tagged JSON parts, in bytes;
            # a column (and a covering index) because reading every row's content back at each append
            # made an append at the cap ~9x slower. A database from before caps gets it once, here.
            db.execute("ALTER TABLE messages ADD COLUMN size INTEGER")
            db.execute("UPDATE messages SET size = COALESCE(length(CAST(content AS BLOB)), 0)")
        db.execute("CREATE INDEX IF NOT EXISTS messages_sizes ON messages(conversation_id, idx, role, size)")
        self._db = db
        self._sweep()  # what expired while the gateway was down

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _history(self, conversation_id: str) -> list[Message]:
        assert self._db is not None
        row = self._db.execute(
            "SELECT system FROM conversations WHERE id = ? AND updated >= ?", (conversation_id, self.caps.cutoff())
        ).fetchone()
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

    def _append(self, conversation_id: str, messages: list[Message], system: str | None) -> int:
        assert self._db is not None
        now = time.time()
        db = self._db
        caps = self.caps
        db.execute("BEGIN IMMEDIATE")
        try:
            # an expired conversation that the sweep has not reached yet starts afresh
            expired = db.execute(
                "SELECT 1 FROM conversations WHERE id = ? AND updated < ?", (conversation_id, caps.cutoff(now))
            ).fetchone()
            if expired:
                self._delete(conversation_id)
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
                        len(content.encode("utf-8", "surrogatepass")) if content else 0,
                    )
                )
            db.executemany(
                "INSERT INTO messages (conversation_id, idx, role, content, extra, created, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            drop = 0
            if caps.max_messages or caps.max_bytes:
                count, total = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE conversation_id = ?",
                    (conversation_id,),
                ).fetchone()
                cur = db.execute(
                    "SELECT role, size FROM messages WHERE conversation_id = ? ORDER BY idx", (conversation_id,)
                )
                drop = plan_drop_from(iter(cur), count, total, len(rows), caps.max_messages, caps.max_bytes)
                cur.close()
                if drop:
                    db.execute(
                        "DELETE FROM messages WHERE conversation_id = ? AND idx < (SELECT idx FROM messages "
                        "WHERE conversation_id = ? ORDER BY idx LIMIT 1 OFFSET ?)",
                        (conversation_id, conversation_id, drop),
                    )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite has already rolled back on some errors (SQLITE_FULL): keep the cause
                db.execute("ROLLBACK")
            raise
        return drop

    def _delete(self, conversation_id: str) -> bool:
        assert self._db is not None
        self._db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
        cur = self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return cur.rowcount > 0

    def _list(self, owner: str, limit: int) -> list[dict[str, Any]]:
        assert self._db is not None
        where, args = self._owned(owner)
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

    def _owned(self, owner: str) -> tuple[str, tuple[Any, ...]]:
        """A WHERE clause for ``owner``'s unexpired conversations (``c``) and its arguments."""
        # ids of one owner share its prefix; open mode ("") excludes every key's ("k/...") conversations
        cutoff = self.caps.cutoff()
        if owner:
            return "substr(c.id, 1, ?) = ? AND c.updated >= ?", (len(owner), owner, cutoff)
        return "c.id NOT LIKE 'k/%' AND c.updated >= ?", (cutoff,)

    def _count(self, owner: str, besides: str | None) -> int:
        assert self._db is not None
        where, args = self._owned(owner)
        (n,) = self._db.execute(
            f"SELECT COUNT(*) FROM conversations c WHERE {where} AND c.id IS NOT ?", (*args, besides)
        ).fetchone()
        return int(n)

    def _sweep(self) -> int:
        """Delete every expired conversation (at start and every ``sweep_interval``)."""
        assert self._db is not None
        if self.caps.ttl <= 0:
            return 0
        db = self._db
        cutoff = self.caps.cutoff()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "DELETE FROM messages WHERE conversation_id IN (SELECT id FROM conversations WHERE updated < ?)",
                (cutoff,),
            )
            n = db.execute("DELETE FROM conversations WHERE updated < ?", (cutoff,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return n

    def _set_title(self, conversation_id: str, title: str) -> bool:
        assert self._db is not None
        cur = self._db.execute(
            "UPDATE conversations SET title = ? WHERE id = ? AND updated >= ?",
            (title[:MAX_TITLE], conversation_id, self.caps.cutoff()),
        )
        return cur.rowcount > 0

    def _truncate(self, conversation_id: str, keep: int) -> bool:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "UPDATE conversations SET updated = ? WHERE id = ? AND updated >= ?",
                (time.time(), conversation_id, self.caps.cutoff()),
            )
            if cur.rowcount:  # the turns are numbered in order (_append), from 0 until the oldest were dropped
                db.execute(
                    "DELETE FROM messages WHERE conversation_id = ? AND idx >= (SELECT idx FROM messages "
                    "WHERE conversation_id = ? ORDER BY idx LIMIT 1 OFFSET ?)",
                    (conversation_id, conversation_id, max(0, keep)),
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

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> int:
        self._start_sweeper()
        return await self._run(self._append, conversation_id, messages, system)

    async def count(self, owner: str, besides: str | None = None) -> int:
        return await self._run(self._count, owner, besides)

    async def sweep(self) -> int:
        return await self._run(self._sweep)

    async def delete(self, conversation_id: str) -> bool:
        return await self._run(self._delete, conversation_id)

    async def aclose(self) -> None:
        await self._stop_sweeper()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)
