"""Ships resumable generations' events to Redis Streams, in batches, off the hot path.

The relay already keeps every event of a generation, encoded once, in
``Generation.log``. So nothing is added to the token loop: one task per process
wakes every ``redis_flush_ms``, takes the events each live generation logged
since the last tick and writes them all in ONE pipeline (one round trip per
tick for the whole process, one ``XADD`` per generation per tick, however many
tokens arrived).

Layout of one generation ``S`` (prefix ``P``):

- ``P:s:S:m`` — ``{"epoch": …, "owner": …}``, set with NX when the generation
  starts (the cross-instance uniqueness of ``stream_id``), plus ``"end": seq``
  once the end is shipped;
- ``P:s:S`` — a Redis Stream; each entry is a batch of consecutive events:
  ``f`` = seq of the first, ``e`` = epoch, ``d`` = the events' id-less
  encodings joined by ``\\n`` (orjson never emits a raw newline). The entry ID
  is ``<seq of the last event>-1``, so ``XRANGE P:s:S <n>-0 +`` starts at the
  batch holding event ``n``.

Both keys are capped (``MAXLEN ~``) and expire ``resume_retention`` seconds
after the end. When a write fails (Redis down or restarted), the generation is
marked for a resync: once Redis answers again, its whole log (still in memory)
is written afresh, so a restarted Redis gets every event back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import NoScriptError

from ..store.redis import FAULTS, RedisLink, raise_if_cancelled, stop_tasks

if TYPE_CHECKING:
    from ..runtime.relay import Run

__all__ = ["CHUNK", "MAXLEN", "StreamShipper"]

log = logging.getLogger("tokenwire.cluster")

#: most events in one stream entry (bounds an entry's size on a resync)
CHUNK = 512
#: approximate cap on entries per stream (a batch holds >= 1 event)
MAXLEN = 20_000
#: time-to-live of a running generation's keys, refreshed while it runs
RUNNING_TTL = 600
_REFRESH = 60.0


_RESYNC, _ENDED, _REFRESH_TTL = 1, 2, 4

# One script call per tick writes every live generation's new batches: one
# command to pack and one reply to parse in the gateway, however many streams.
# Per key: flags, epoch, meta value (on a resync or at the end, when it
# records the end's seq), n, then n x (entry id, f, d).
_SHIP = """
local maxlen, running, keep = ARGV[1], ARGV[2], ARGV[3]
local a = 4
for _, key in ipairs(KEYS) do
  local flags = tonumber(ARGV[a])
  local epoch = ARGV[a + 1]
  local n = tonumber(ARGV[a + 3])
  local meta = key .. ':m'
  if flags % 2 == 1 then
    redis.call('DEL', key)
    redis.call('SET', meta, ARGV[a + 2], 'EX', running)
  end
  a = a + 4
  for _ = 1, n do
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, ARGV[a], 'f', ARGV[a + 1], 'e', epoch, 'd', ARGV[a + 2])
    a = a + 3
  end
  if math.floor(flags / 2) % 2 == 1 then
    redis.call('EXPIRE', key, keep)
    redis.call('SET', meta, ARGV[a - 3 * n - 2], 'EX', keep)
  elseif math.floor(flags / 4) % 2 == 1 then
    redis.call('EXPIRE', key, running)
    redis.call('EXPIRE', meta, running)
  end
end
return #KEYS
"""


def _pack(*args: Any) -> bytes:
    """One command in RESP (arguments: bytes, str or int)."""
    enc = [a if type(a) is bytes else b"%d" % a if type(a) is int else a.encode() for a in args]
    return b"*%d\r\n" % len(enc) + b"".join([b"$%d\r\n%b\r\n" % (len(a), a) for a in enc])


class _Ship:
    __slots__ = ("epoch", "key", "meta_value", "refreshed", "resync", "run", "sent")

    def __init__(self, run: Run, key: str, epoch: bytes, meta_value: bytes) -> None:
        self.run = run
        self.key = key.encode()
        self.epoch = epoch
        self.meta_value = meta_value
        self.sent = 0  #: seq of the next event to write
        self.resync = False
        self.refreshed = time.monotonic()


class StreamShipper:
    def __init__(self, link: RedisLink, prefix: str, interval: float, retention: float) -> None:
        self.link = link
        self.prefix = prefix
        self.interval = interval
        self.retention = max(1, int(retention))
        self.ships: dict[str, _Ship] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.stats = {"ticks": 0, "entries": 0, "events": 0, "resyncs": 0}
        self._sha = hashlib.sha1(_SHIP.encode()).hexdigest().encode()
        self._conn: Any = None

    async def _ship(self, keys: list[bytes], args: list[Any]) -> None:
        """``EVALSHA``, packed here, on a connection kept for the shipper.

        redis-py's generic packing and pool hand-out cost several times more
        than this per tick, and a tick carries several arguments per stream.
        """
        conn = self._conn
        if conn is None:
            conn = self._conn = await self.link.redis.connection_pool.get_connection()
        try:
            await conn.send_packed_command(_pack(b"EVALSHA", self._sha, len(keys), *keys, *args), check_health=False)
            try:
                await conn.read_response()
            except NoScriptError:
                # a new or restarted Redis: send the script itself once
                await conn.send_packed_command(_pack(b"EVAL", _SHIP.encode(), len(keys), *keys, *args))
                await conn.read_response()
        except BaseException:
            self._conn = None
            with contextlib.suppress(BaseException):
                await conn.disconnect()
            with contextlib.suppress(BaseException):
                await self.link.redis.connection_pool.release(conn)
            raise

    def key(self, stream_id: str) -> str:
        return f"{self.prefix}:s:{stream_id}"

    def add(self, run: Run, epoch: bytes, meta_value: bytes) -> None:
        sid = run.key  # the stream id scoped by its API key (relay.stream_key)
        self.ships[sid] = _Ship(run, self.key(sid), epoch, meta_value)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()

    async def _loop(self) -> None:
        backoff = 0.0
        while True:
            if not self.ships:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(max(self.interval, backoff))
            try:
                await self.flush()
                backoff = 0.0
            except FAULTS as exc:
                raise_if_cancelled(exc)
                backoff = min(1.0, max(0.05, backoff * 2))
            except Exception:
                log.exception("shipping stream events to Redis failed")
                backoff = 1.0

    async def flush(self) -> None:
        """Write every live generation's new events in one pipeline."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self.ships:
            return
        keys: list[bytes] = []
        args: list[Any] = [MAXLEN, RUNNING_TTL, self.retention]
        plan: list[tuple[_Ship, int, bool]] = []
        now = time.monotonic()
        for ship in self.ships.values():
            gen = ship.run.gen
            flags = 0
            if ship.resync:
                flags |= _RESYNC
                ship.sent = gen.first_seq
            upto = gen.seq + 1
            entries: list[Any] = []
            if upto > ship.sent:
                start = ship.sent - gen.first_seq
                if start < 0:  # trimmed from memory before it could be shipped: readers will see the gap
                    ship.sent, start = gen.first_seq, 0
                events = gen.log[start:]
                first = ship.sent
                if len(events) <= CHUNK:  # the usual case
                    entries = [b"%d-1" % (first + len(events) - 1), first, b"\n".join(events)]
                else:
                    for i in range(0, len(events), CHUNK):
                        part = events[i : i + CHUNK]
                        entries += (b"%d-1" % (first + i + len(part) - 1), first + i, b"\n".join(part))
                self.stats["entries"] += len(entries) // 3
                self.stats["events"] += len(events)
            done = gen.ended
            if done:
                flags |= _ENDED
            elif (entries or flags) and (ship.resync or now - ship.refreshed > _REFRESH):
                flags |= _REFRESH_TTL
                ship.refreshed = now
            if entries or flags:
                keys.append(ship.key)
                meta = ship.meta_value if flags & _RESYNC else b""
                if done:  # readers can tell a finished stream whose log is gone from a running one
                    meta = orjson.dumps({**orjson.loads(ship.meta_value), "end": gen.seq})
                args += (flags, ship.epoch, meta, len(entries) // 3, *entries)
                plan.append((ship, upto, done))
        if not plan:
            return
        self.stats["ticks"] += 1
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.link.deadline):
                await self._ship(keys, args)
        except BaseException as exc:
            for ship, _, _ in plan:
                ship.resync = True
            if isinstance(exc, FAULTS):
                self.link.rtt("ship", t0)
                self.link.fault(exc, "shipping stream events")
                self.stats["resyncs"] += 1
            raise
        self.link.rtt("ship", t0)
        self.link.ok()
        for ship, upto, done in plan:
            ship.sent = upto
            ship.resync = False
            if done:
                self.ships.pop(ship.run.key, None)

    async def aclose(self, timeout: float) -> None:
        """Ship what is left (the ends of drained generations), then stop."""
        deadline = time.monotonic() + timeout
        while self.ships and time.monotonic() < deadline:
            try:
                await self.flush()
            except FAULTS as exc:
                raise_if_cancelled(exc)
                await asyncio.sleep(0.1)
            else:
                if any(not s.run.gen.ended for s in self.ships.values()):
                    break  # still running: cancelled by shutdown, nothing more will come
        if self.ships:
            log.warning("%d stream logs not fully shipped to Redis at exit", len(self.ships))
        if self._task is not None:
            await stop_tasks([self._task])
        if self._conn is not None:
            with contextlib.suppress(BaseException):
                await self.link.redis.connection_pool.release(self._conn)
            self._conn = None
