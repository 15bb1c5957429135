"""A generation running on another instance, followed through its Redis Stream.

:class:`RemoteRun` looks enough like :class:`~tokenwire.runtime.relay.Run` for
``Session.attach`` to treat it the same way: ``gen.after(last_seq)`` gives the
replay (read with ``XRANGE``), subscribers then get the live tail (``XREAD
BLOCK``) until ``end``. Events are checked by ``seq`` and epoch: a duplicate
(from a batch that straddles ``last_seq`` or a resync) is skipped, a gap or a
different epoch is answered with ``stream_expired`` — never a wrong stream.
``cancel``/``pause``/``resume`` are sent to the owning instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import orjson

from ..protocol.errors import GatewayError
from ..protocol.events import ERROR
from ..protocol.stream import Generation, StreamExpired, decode_event
from ..store.redis import FAULTS, raise_if_cancelled

if TYPE_CHECKING:
    from . import Cluster

__all__ = ["RemoteRun"]

log = logging.getLogger("tokenwire.cluster")

#: how long a follower keeps retrying a Redis that is down before it tells the client
FOLLOW_GRACE = 15.0
#: with no new event for this long, check that the owning instance is still alive
OWNER_CHECK = 10.0
_PAGE = 1000


class RemoteRun:
    """Another instance's generation, as seen from this one."""

    resumable = True
    conversation_id = None

    def __init__(
        self,
        cluster: Cluster,
        stream_id: str,
        epoch: bytes,
        owner: str,
        last_seq: int,
        end: int | None = None,
        rkey: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.end = end  #: the end's seq, if the owner had shipped it when we looked
        #: the registry key of the generation (its stream id scoped by its API key, relay.stream_key):
        #: what its Redis keys and the control messages to its owner name
        self.rkey = rkey or stream_id
        self.key = cluster.shipper.key(self.rkey)
        self.epoch = epoch
        self.owner = owner
        self.owner_key: str | None = None  #: the id of the API key that started the generation, if any
        self.gen = Generation(stream_id)
        self.gen.seq = last_seq
        self.gen.first_seq = last_seq + 1
        self.last_id = f"{last_seq}-1" if last_seq >= 0 else "0-0"
        self.subs: list[Any] = []
        self.ended = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.watching = False

    # -- reading the log ------------------------------------------------------
    async def load(self, last_seq: int) -> None:
        """Read every logged event after ``last_seq`` (the replay)."""
        link = self.cluster.link
        lo = f"{last_seq + 1}-0"
        while True:
            entries = await link.call(
                link.redis.xrange(self.key, min=lo, max="+", count=_PAGE), f"reading stream {self.gen.stream_id}"
            )
            if not entries:
                break
            self._ingest(entries)
            if len(entries) < _PAGE or self.gen.ended:
                break
            lo = "(" + self.last_id
        self._check_end()

    def _check_end(self) -> None:
        """A finished stream whose log does not reach its end has lost events."""
        gen = self.gen
        if self.end is not None and not gen.ended:
            if gen.seq > self.end:
                raise StreamExpired(gen.stream_id, f"last_seq {gen.seq} is ahead of stream {gen.stream_id}")
            raise StreamExpired(
                gen.stream_id,
                f"events {gen.seq + 1}..{self.end} of stream {gen.stream_id} are no longer kept; it cannot be resumed",
            )

    def _ingest(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[bytes]:
        """Append the new events of these entries to the log; return them."""
        gen = self.gen
        fresh: list[bytes] = []
        for entry_id, fields in entries:
            self.last_id = entry_id.decode()
            if fields.get(b"e") != self.epoch:
                raise StreamExpired(gen.stream_id, f"stream {gen.stream_id} was replaced; it cannot be resumed")
            seq = int(fields[b"f"])
            for rest in fields[b"d"].split(b"\n"):
                if seq <= gen.seq:  # already delivered (a batch straddling last_seq, or a resync)
                    if rest.startswith(b'"type":"end"'):
                        if seq < gen.seq:
                            raise StreamExpired(
                                gen.stream_id,
                                f"last_seq {gen.seq} is ahead of stream {gen.stream_id} (it ended at {seq})",
                            )
                        gen.ended = True  # the client already has the end
                        return fresh
                    seq += 1
                    continue
                if seq != gen.seq + 1:
                    raise StreamExpired(
                        gen.stream_id,
                        f"events {gen.seq + 1}..{seq - 1} of stream {gen.stream_id} are no longer kept; "
                        "it cannot be resumed",
                    )
                gen.seq = seq
                gen.log.append(rest)
                fresh.append(rest)
                if rest.startswith(b'"type":"end"'):
                    gen.ended = True
                    return fresh
                seq += 1
        return fresh

    # -- Run's interface --------------------------------------------------------
    def subscribe(self, sub: Any) -> None:
        self.subs.append(sub)
        if self.task is None and not self.gen.ended:
            self.task = asyncio.get_running_loop().create_task(self._follow())
        if not self.watching:
            self.watching = True
            self.cluster.send_control("watch", self.rkey, self.owner)

    def unsubscribe(self, sub: Any) -> None:
        with contextlib.suppress(ValueError):
            self.subs.remove(sub)
        if not self.subs:
            self._stop()

    def _stop(self) -> None:
        if self.watching:
            self.watching = False
            self.cluster.send_control("unwatch", self.rkey, self.owner)
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()

    def cancel(self, reason: str = "cancelled") -> None:
        gen = self.gen
        self.cluster.send_control("cancel", self.rkey, self.owner, settled=lambda: gen.ended, reason=reason)

    def set_paused(self, *, by_socket: bool | None = None, self_: bool | None = None) -> None:
        self.cluster.send_control("pause", self.rkey, self.owner, by_socket=by_socket, self_=self_)

    # -- the live tail ----------------------------------------------------------
    async def _follow(self) -> None:
        link = self.cluster.link
        block_ms = max(50, min(1000, int(link.timeout * 500)))
        last_ok = time.monotonic()
        last_event = last_ok
        delay = 0.05
        try:
            while not self.gen.ended:
                try:
                    async with asyncio.timeout(block_ms / 1000 + link.deadline):
                        resp = await link.redis.xread({self.key: self.last_id}, count=_PAGE, block=block_ms)
                except FAULTS as exc:
                    raise_if_cancelled(exc)
                    link.fault(exc, "following a stream")
                    if time.monotonic() - last_ok > FOLLOW_GRACE:
                        await self._fail(
                            GatewayError(
                                "store_unavailable",
                                f"Redis at {link.url} has been unavailable for {FOLLOW_GRACE:g} s while following "
                                f"stream {self.gen.stream_id}; attach again (with your last seq) to resume",
                                retryable=True,
                            )
                        )
                        return
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)
                    continue
                link.ok()
                now = last_ok = time.monotonic()
                delay = 0.05
                if not resp:
                    if now - last_event > OWNER_CHECK:
                        last_event = now
                        lost = await self._lost()
                        if lost is not None:
                            await self._fail(lost)
                            return
                    continue
                last_event = now
                try:
                    fresh = self._ingest(resp[0][1])
                except GatewayError as err:
                    await self._fail(err)
                    return
                for rest in fresh:
                    await self._deliver(rest)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following stream %s failed", self.gen.stream_id)
            await self._fail(GatewayError("internal_error", "internal error while following the stream"))
            return
        finally:
            self.ended.set()
            self._stop()

    async def _lost(self) -> GatewayError | None:
        """After a long silence: is the stream gone, ended without us, or its owner dead?"""
        sid = self.gen.stream_id
        try:
            raw = await self.cluster.link.call(self.cluster.link.redis.get(self.key + ":m"))
        except GatewayError:
            return None  # Redis trouble is handled by the read loop
        if raw is None:
            return StreamExpired(sid, f"stream {sid} is past its retention window; it cannot be resumed")
        meta = orjson.loads(raw)
        if meta.get("epoch", "").encode() != self.epoch:
            return StreamExpired(sid, f"stream {sid} was replaced; it cannot be resumed")
        if meta.get("end") is not None:
            self.end = meta["end"]
            try:
                self._check_end()
            except GatewayError as err:
                return err
        if not await self.cluster.alive(self.owner):
            return StreamExpired(
                sid, f"instance {self.owner} running stream {sid} is gone before its end; it cannot be resumed"
            )
        return None

    async def _deliver(self, rest: bytes) -> None:
        kind, value = decode_event(rest)  # what a local run would hand them, for every dialect
        for sub in tuple(self.subs):
            try:
                wait: Awaitable[None] | None = sub.send(rest, kind, value)
                if wait is not None:
                    await wait
            except (ConnectionError, RuntimeError):
                self.unsubscribe(sub)

    async def _fail(self, err: GatewayError) -> None:
        """Tell the attached sockets this stream cannot continue, and end the attachment."""
        body = err.to_event(None)
        del body["id"]
        rest = orjson.dumps(body)[1:]
        for sub in tuple(self.subs):
            with contextlib.suppress(ConnectionError, RuntimeError):
                wait = sub.send(rest, ERROR, err)
                if wait is not None:
                    await wait
        self.ended.set()
        self._stop()
