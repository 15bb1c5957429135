"""Redis connection with bounded calls and a health record, and conversations kept in Redis.

Every Redis call made by the gateway goes through :meth:`RedisLink.call` (or a
pipeline executed with the same deadline), so a Redis that is down, restarting
or wedged turns into a clear ``store_unavailable`` error within
``redis_timeout``-ish seconds, never a hung client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..protocol.errors import GatewayError
from .base import MAX_TITLE, Message, StoreCaps, owner_of, stop_tasks, summary

__all__ = ["FAULTS", "RedisConversationStore", "RedisLink", "raise_if_cancelled", "redact", "stop_tasks"]

log = logging.getLogger("tokenwire.redis")

T = TypeVar("T")

#: What a broken, restarting or unreachable Redis raises.
FAULTS = (RedisError, OSError, TimeoutError)


def raise_if_cancelled(exc: BaseException) -> None:
    """Re-raise a cancellation the Redis client turned into an error.

    redis-py can answer a cancel in the middle of a connect or a read with a connection
    error. Treated as a fault, that swallowed the cancel: a background loop (heartbeat,
    control channel) then never stopped, and a worker hung at shutdown (seen 1 in 15 starts
    stopped at once).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def redact(url: str) -> str:
    """The URL without its password (for logs and /healthz)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


class RedisLink:
    """One pooled client plus what the gateway knows about Redis's health."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = redact(url)
        self.timeout = timeout
        # One immediate retry: after a Redis restart the first use of a pooled
        # connection fails once, and a fresh connection then works.
        self.redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
            # followers hold a connection each while they block on XREAD
            max_connections=10_000,
        )
        #: a hard ceiling on one call, whatever the socket time-outs do
        self.deadline = 2 * timeout + 0.5
        self.healthy = True
        self.error: str | None = None
        self.down_since: float | None = None
        self.faults = 0
        #: told (op, seconds) of every round trip, failed ones too: "call" here, "ship" for the
        #: stream shipper's batched tick (the gateway's metrics set it; None: not measured)
        self.on_rtt: Callable[[str, float], None] | None = None

    async def call(self, aw: Awaitable[T], what: str = "Redis") -> T:
        """Await one Redis call with the deadline; a fault becomes ``store_unavailable``."""
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline):
                result = await aw
        except FAULTS as exc:
            raise_if_cancelled(exc)
            self.rtt("call", t0)
            raise self.fault(exc, what) from None
        self.rtt("call", t0)
        self.ok()
        return result

    def rtt(self, op: str, t0: float) -> None:
        """A round trip begun at ``t0`` (``time.monotonic``) is over."""
        if self.on_rtt is not None:
            self.on_rtt(op, time.monotonic() - t0)

    def fault(self, exc: BaseException, what: str = "Redis") -> GatewayError:
        """Record a fault (logged once per outage) and describe it for a client."""
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.healthy:
            log.error("Redis at %s is unavailable: %s", self.url, detail)
            self.down_since = time.time()
        self.healthy = False
        self.error = detail
        self.faults += 1
        return GatewayError(
            "store_unavailable",
            f"{what} failed: Redis at {self.url} is unavailable ({detail}); retry shortly",
            retryable=True,
        )

    def ok(self) -> None:
        if not self.healthy:
            log.warning("Redis at %s is reachable again", self.url)
            self.healthy = True
            self.error = None
            self.down_since = None

    def health(self) -> dict[str, Any]:
        return {
            "ok": self.healthy,
            "url": self.url,
            "error": self.error,
            "down_since": self.down_since,
            "faults": self.faults,
        }

    async def aclose(self) -> None:
        try:
            await self.redis.aclose()
        except FAULTS:
            pass


#: One append, atomically: the system prompt, the turns, the caps (StoreCaps: the oldest messages
#: dropped, as store.base.plan_drop does, with a message's size the bytes of its JSON), the
#: owner's index and the TTL (PEXPIRE on every key of the conversation, refreshed by each write).
#: KEYS: turns, sys, title, bytes (the turns' total size), index.
#: ARGV: max_messages, max_bytes, ttl_ms, now, id, has_system ("1"/"0"), system, turns...
_APPEND = """
local turns, sys, title, bytes, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_m, max_b, ttl, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[6] == '1' then redis.call('SET', sys, ARGV[7]) end
local total = redis.call('GET', bytes)
if total then
  total = tonumber(total)
else
  total = 0
  for _, e in ipairs(redis.call('LRANGE', turns, 0, -1)) do total = total + #e end
end
local n = #ARGV - 7
for i = 8, #ARGV do
  redis.call('RPUSH', turns, ARGV[i])
  total = total + #ARGV[i]
end
local len = redis.call('LLEN', turns)
local drop = 0
while len > n and ((max_m > 0 and len > max_m) or (max_b > 0 and total > max_b)) do
  total = total - #redis.call('LPOP', turns)
  len = len - 1
  drop = drop + 1
end
if drop > 0 then
  while len > n do
    local e = redis.call('LINDEX', turns, 0)
    if cjson.decode(e)['role'] == 'user' then break end
    redis.call('LPOP', turns)
    total = total - #e
    len = len - 1
    drop = drop + 1
  end
end
redis.call('SET', bytes, total)
redis.call('ZADD', index, now, ARGV[5])
if ttl > 0 then
  for _, k in ipairs({turns, sys, title, bytes, index}) do redis.call('PEXPIRE', k, ttl) end
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl / 1000)
end
return drop
"""


class RedisConversationStore:
    """Conversations as a Redis list of JSON turns plus one key for the system prompt.

    Shared by every instance, so any instance continues any conversation. A sorted set per owner
    (``P:cl:OWNER``, scored by the last update) lists them; ``P:c:ID:t`` holds a title and
    ``P:c:ID:b`` the turns' total size. With a TTL every one of them expires ``ttl`` after the
    last write (Redis itself forgets them: no sweep), and the index drops entries that old.
    """

    def __init__(self, url: str, prefix: str = "tw", timeout: float = 2.0, caps: StoreCaps | None = None) -> None:
        self.link = RedisLink(url, timeout)
        self.prefix = prefix
        self.caps = caps or StoreCaps()
        self._append_script = self.link.redis.register_script(_APPEND)

    def _keys(self, conversation_id: str) -> tuple[str, str]:
        base = f"{self.prefix}:c:{conversation_id}"
        return base, base + ":sys"

    async def history(self, conversation_id: str) -> list[Message]:
        turns_key, sys_key = self._keys(conversation_id)
        pipe = self.link.redis.pipeline(transaction=False)
        pipe.get(sys_key)
        pipe.lrange(turns_key, 0, -1)
        system, turns = await self.link.call(pipe.execute(), "loading the conversation")
        out: list[Message] = [{"role": "system", "content": system.decode()}] if system is not None else []
        out.extend(orjson.loads(t) for t in turns)
        return out

    async def append(self, conversation_id: str, messages: list[Message], system: str | None = None) -> int:
        if not messages and system is None:
            return 0
        turns_key, sys_key = self._keys(conversation_id)
        caps = self.caps
        keys = [turns_key, sys_key, turns_key + ":t", turns_key + ":b", self._index(conversation_id)]
        args: list[Any] = [caps.max_messages, caps.max_bytes, int(caps.ttl * 1000), repr(time.time())]
        args += [conversation_id.encode(), b"1" if system is not None else b"0", (system or "").encode()]
        args += [orjson.dumps(m) for m in messages]
        drop = await self.link.call(self._append_script(keys, args), "storing the conversation")
        return int(drop)

    def _expire_index(self, pipe: Any, index: str) -> None:
        """Drop the index entries of conversations past the TTL (their keys are gone already)."""
        if self.caps.ttl > 0:
            pipe.zremrangebyscore(index, "-inf", self.caps.cutoff())

    async def count(self, owner: str, besides: str | None = None) -> int:
        pipe = self.link.redis.pipeline(transaction=False)
        index = f"{self.prefix}:cl:{owner}"
        self._expire_index(pipe, index)
        pipe.zcard(index)
        pipe.zscore(index, (besides or "").encode())
        got = await self.link.call(pipe.execute(), "counting conversations")
        return int(got[-2]) - (besides is not None and got[-1] is not None)

    def _index(self, conversation_id: str) -> str:
        return f"{self.prefix}:cl:{owner_of(conversation_id)}"

    async def delete(self, conversation_id: str) -> bool:
        pipe = self.link.redis.pipeline(transaction=True)
        pipe.delete(*self._keys(conversation_id))
        pipe.delete(self._keys(conversation_id)[0] + ":t", self._keys(conversation_id)[0] + ":b")
        pipe.zrem(self._index(conversation_id), conversation_id.encode())
        n, _, _ = await self.link.call(pipe.execute(), "deleting the conversation")
        return bool(n)

    async def list(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        r = self.link.redis
        index = f"{self.prefix}:cl:{owner}"
        pipe = r.pipeline(transaction=False)
        self._expire_index(pipe, index)
        pipe.zrevrange(index, 0, limit - 1, withscores=True)
        rows = (await self.link.call(pipe.execute(), "listing conversations"))[-1]
        if not rows:
            return []
        pipe = r.pipeline(transaction=False)
        for cid, _ in rows:
            base = f"{self.prefix}:c:{cid.decode()}"
            pipe.get(base + ":t")
            pipe.lrange(base, 0, 1)  # the first question is one of the first two turns (after a tool turn: rare)
        got = await self.link.call(pipe.execute(), "listing conversations")
        out = []
        for i, (cid, score) in enumerate(rows):
            title, head = got[2 * i], got[2 * i + 1]
            first = next((m.get("content") for m in map(orjson.loads, head) if m.get("role") == "user"), None)
            out.append(summary(cid.decode(), title.decode() if title else None, first, score))
        return out

    async def truncate(self, conversation_id: str, keep: int) -> bool:
        r = self.link.redis
        turns_key, sys_key = self._keys(conversation_id)
        if not await self.link.call(r.exists(turns_key, sys_key), "editing the conversation"):
            return False
        pipe = r.pipeline(transaction=True)
        if keep > 0:
            pipe.ltrim(turns_key, 0, keep - 1)
        else:
            pipe.delete(turns_key)
        pipe.delete(turns_key + ":b")  # the total size is counted afresh by the next append
        pipe.zadd(self._index(conversation_id), {conversation_id.encode(): time.time()})
        if self.caps.ttl > 0:
            for key in (turns_key, sys_key, turns_key + ":t", self._index(conversation_id)):
                pipe.pexpire(key, int(self.caps.ttl * 1000))
        await self.link.call(pipe.execute(), "editing the conversation")
        return True

    async def set_title(self, conversation_id: str, title: str) -> bool:
        r = self.link.redis
        base = self._keys(conversation_id)[0]
        if not await self.link.call(r.exists(base, base + ":sys"), "naming the conversation"):
            return False
        # the title expires with the conversation (its TTL counts from the last turn)
        ttl = await self.link.call(r.pttl(base), "naming the conversation") if self.caps.ttl > 0 else 0
        ex = {"px": ttl} if ttl and ttl > 0 else {}
        await self.link.call(r.set(base + ":t", title[:MAX_TITLE].encode(), **ex), "naming the conversation")
        return True

    async def aclose(self) -> None:
        await self.link.aclose()
