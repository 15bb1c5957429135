"""Scale-out over Redis: several gateway instances behind one load balancer, no sticky sessions.

With ``redis_url`` set, :class:`Cluster` plugs into the :class:`Gateway`:

- conversations live in Redis (:class:`~tokenwire.store.redis.RedisConversationStore`);
- the ``conversation_busy`` lock is a Redis key (``SET NX PX``), so it holds across instances;
- resumable generations are shipped to Redis Streams in batches (:mod:`.shipper`),
  and an ``attach`` for a generation this instance does not hold follows the
  stream (:mod:`.follower`);
- ``cancel``/``pause``/``resume`` for such a generation are published on one
  control channel and applied by the instance that runs it;
- each instance keeps a liveness key, so a follower can tell a crashed owner
  from a slow generation;
- on SIGTERM the server closes resumable sockets at once with 4001 (their clients
  resume on another instance) while the generations finish here, shipped to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..config import StartupError
from ..protocol.errors import GatewayError
from ..protocol.frames import Attach, Chat
from ..runtime.relay import Registry, Run, conversation_key, stream_key
from ..runtime.routing import Route
from ..store.redis import FAULTS, RedisConversationStore, raise_if_cancelled, stop_tasks
from .remote import RemoteRun
from .shipper import StreamShipper

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Cluster", "ClusterRegistry"]

log = logging.getLogger("tokenwire.cluster")

#: the conversation lock's lifetime; refreshed by the heartbeat while the reply runs
LOCK_MS = 30_000
HEARTBEAT = 2.0
ALIVE_TTL = 10
CANCEL_RETRY_S = 30.0  #: how long a cancel is re-sent while Redis is down or the owner is not subscribed

# Compare-and-delete: free a lock only if it is still ours.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class _RemoteWatcher:
    """Stands in, on the owning instance, for sockets following a generation from elsewhere.

    While it is subscribed the generation is not "detached", so it is not
    abandoned after the retention window.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def send(self, rest: bytes, kind: int, value: Any) -> None:
        return None


class ClusterRegistry(Registry):
    """The local registry, plus Redis-wide uniqueness, locks and stream shipping."""

    def __init__(self, cluster: Cluster, store: RedisConversationStore, retention: float, read_timeout: float) -> None:
        super().__init__(store, retention, read_timeout)
        self.cluster = cluster
        #: stream_id -> (lock key, lock token) for conversations this instance is answering
        self.locks: dict[str, tuple[str, str]] = {}

    async def begin(
        self,
        chat: Chat,
        route: Route,
        conversation_id: str | None,
        resumable: bool,
        admit: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> Run:
        c = self.cluster
        link = c.link
        r = link.redis
        stream_id = chat.stream_id or self.new_stream_id()
        lock: tuple[str, str] | None = None
        meta: tuple[str, bytes, bytes] | None = None
        try:
            if resumable:
                epoch = uuid.uuid4().hex[:16].encode()
                # the API key that started it: only that key may attach, on any instance
                key_id = getattr(getattr(chat, "owner", None), "key_id", None)
                meta_value = orjson.dumps({"epoch": epoch.decode(), "owner": c.instance, "key_id": key_id})
                meta_key = c.shipper.key(stream_key(stream_id, chat.owner)) + ":m"  # scoped per API key
                fresh = await link.call(r.set(meta_key, meta_value, nx=True, ex=600), "reserving the stream id")
                if not fresh:
                    raise GatewayError("duplicate_id", f"stream_id {stream_id} is already in use")
                meta = (meta_key, epoch, meta_value)
            if conversation_id is not None:
                lock_key = f"{c.prefix}:busy:{conversation_key(conversation_id, chat.owner)}"
                token = f"{c.instance}:{stream_key(stream_id, chat.owner)}"
                got = await link.call(r.set(lock_key, token, nx=True, px=LOCK_MS), "locking the conversation")
                if not got:
                    raise GatewayError(
                        "conversation_busy",
                        f"conversation {conversation_id} is already generating a reply (on this or another "
                        "instance); wait for its end or cancel it",
                        retryable=True,
                    )
                lock = (lock_key, token)
            run = await super().begin(chat, route, conversation_id, resumable, admit)
        except BaseException as exc:
            if meta is not None:
                await self._release(meta[0], meta[2].decode())
            if lock is not None:
                await self._release(*lock)
            if isinstance(exc, GatewayError) and "id" not in exc.extra:
                exc.extra["id"] = chat.id
            raise
        if lock is not None:
            self.locks[run.key] = lock
        if meta is not None:
            c.shipper.add(run, meta[1], meta[2])
        return run

    async def _release(self, key: str, token: str) -> None:
        link = self.cluster.link
        try:
            await link.call(link.redis.eval(_RELEASE, 1, key, token), "releasing a lock")
        except GatewayError:
            pass  # it expires on its own

    async def commit_reply(self, run: Run, status: str) -> str | None:
        """The reply is stored; free the conversation on every instance before ``end`` goes out."""
        try:
            return await super().commit_reply(run, status)
        finally:
            lock = self.locks.pop(run.key, None)
            if lock is not None:
                await self._release(*lock)

    async def finished(self, run: Run) -> None:
        lock = self.locks.pop(run.key, None)
        if lock is not None:
            await self._release(*lock)
        await super().finished(run)


class Cluster:
    def __init__(self, settings: Settings, store: RedisConversationStore) -> None:
        self.settings = settings
        self.store = store
        self.link = store.link
        self.prefix = settings.redis_prefix
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        #: control messages for this instance's streams (each instance listens on its own, so a
        #: PUBLISH that reaches nobody means the owner is not listening: a cancel is re-sent)
        self.channel = self.control_channel(self.instance)
        self.shipper = StreamShipper(self.link, self.prefix, settings.redis_flush_ms / 1000, settings.resume_retention)
        self.registry = ClusterRegistry(self, store, settings.resume_retention, settings.read_timeout)
        self.watchers: dict[str, _RemoteWatcher] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False  #: the background loops check it too: a cancel can be swallowed
        self.control_ok = False

    # -- life cycle -------------------------------------------------------------
    async def check_reachable(self) -> None:
        """At start-up: one PING, so a wrong or unreachable redis_url stops the start with one line."""
        try:
            async with asyncio.timeout(self.link.deadline):
                await self.link.redis.ping()
        except (*FAULTS, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise StartupError(
                f"cannot reach Redis at {self.link.url} ({reason}); start Redis, fix redis_url "
                "(TOKENWIRE_REDIS_URL), or unset it to run one instance without Redis"
            ) from None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._control())]

    async def aclose(self) -> None:
        await self.shipper.aclose(self.link.deadline * 2)
        self._stopping = True
        await stop_tasks(list(self._tasks))
        with contextlib.suppress(GatewayError):
            await self.link.call(self.link.redis.delete(self._alive_key(self.instance)))

    def health(self) -> dict[str, Any]:
        h = self.link.health()
        h["instance"] = self.instance
        h["control"] = self.control_ok
        h["shipping"] = len(self.shipper.ships)
        return h

    # -- liveness and lock refresh ------------------------------------------------
    def _alive_key(self, instance: str) -> str:
        return f"{self.prefix}:i:{instance}"

    async def _heartbeat(self) -> None:
        while not self._stopping:
            pipe = self.link.redis.pipeline(transaction=False)
            pipe.set(self._alive_key(self.instance), b"1", ex=ALIVE_TTL)
            for key, _ in self.registry.locks.values():
                pipe.pexpire(key, LOCK_MS)
            with contextlib.suppress(GatewayError):
                await self.link.call(pipe.execute(), "heartbeat")
            await asyncio.sleep(HEARTBEAT)

    async def alive(self, instance: str) -> bool:
        """Whether ``instance`` still runs (unknown counts as alive: never fail on a doubt)."""
        try:
            return bool(await self.link.call(self.link.redis.exists(self._alive_key(instance))))
        except GatewayError:
            return True

    # -- control channel ----------------------------------------------------------
    def control_channel(self, instance: str) -> str:
        return f"{self.prefix}:ctl:{instance}"

    def send_control(
        self, op: str, key: str, owner: str, *, settled: Callable[[], bool] | None = None, **args: Any
    ) -> None:
        """Publish a control message for ``owner``, the instance running the generation ``key``
        (its registry key, relay.stream_key).

        A ``cancel`` is retried (backing off, for up to CANCEL_RETRY_S) while Redis is
        unreachable or no instance is subscribed yet (the owner re-subscribing after a Redis
        restart), until ``settled()`` says the stream ended: a lost cancel would let a
        generation run, and bill, to its end. Pause and resume are sent once: retrying them
        could reorder them.
        """
        msg = orjson.dumps({"op": op, "sid": key, **args})
        run = self.registry.runs.get(key)
        if run is not None:  # it is ours after all
            self._apply(orjson.loads(msg))
            return

        async def publish() -> None:
            delay = 0.1
            give_up = time.monotonic() + (CANCEL_RETRY_S if op == "cancel" else 0.0)
            while True:
                try:
                    n = await self.link.call(self.link.redis.publish(self.control_channel(owner), msg), f"sending {op}")
                    if n:
                        return
                    problem = f"{op} for stream {key} did not reach instance {owner}"
                except GatewayError as err:
                    problem = err.message
                if (settled is not None and settled()) or time.monotonic() + delay > give_up:
                    log.warning("%s", problem)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

        task = asyncio.get_running_loop().create_task(publish())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _control(self) -> None:
        delay = 0.1
        while not self._stopping:
            pubsub = self.link.redis.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.link.deadline):
                    await pubsub.subscribe(self.channel)
                self.control_ok = True
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        try:
                            self._apply(orjson.loads(msg["data"]))
                        except Exception:
                            log.exception("bad control message %r", msg.get("data"))
            except FAULTS as exc:
                raise_if_cancelled(exc)
                self.control_ok = False
                self.link.fault(exc, "the control channel")
            finally:
                self.control_ok = False
                with contextlib.suppress(BaseException):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    def _apply(self, msg: dict[str, Any]) -> None:
        run = self.registry.runs.get(msg.get("sid", ""))
        if run is None:
            return
        op = msg.get("op")
        if op == "cancel":
            if not run.gen.ended:
                run.cancel(msg.get("reason") or "cancelled")
        elif op == "pause":
            run.set_paused(by_socket=msg.get("by_socket"), self_=msg.get("self_"))
        elif op == "watch":
            watcher = self.watchers.get(run.key)
            if watcher is None:
                watcher = self.watchers[run.key] = _RemoteWatcher()
                run.subscribe(watcher)
            watcher.count += 1
        elif op == "unwatch":
            watcher = self.watchers.get(run.key)
            if watcher is not None:
                watcher.count -= 1
                if watcher.count <= 0:
                    del self.watchers[run.key]
                    run.unsubscribe(watcher)

    # -- attach to another instance's generation ---------------------------------------
    async def attach_remote(self, req: Attach, key: str) -> RemoteRun | None:
        """Another instance's generation registered as ``key`` (relay.stream_key), or None."""
        link = self.link
        meta_key = self.shipper.key(key) + ":m"
        try:
            raw = await link.call(link.redis.get(meta_key), f"looking up stream {req.stream_id}")
            if raw is None:
                return None
            meta = orjson.loads(raw)
            remote = RemoteRun(
                self, req.stream_id, meta["epoch"].encode(), meta["owner"], req.last_seq, meta.get("end"), key
            )
            remote.owner_key = meta.get("key_id")
            await remote.load(req.last_seq)
        except GatewayError as err:
            err.extra["id"] = req.id
            err.extra.setdefault("stream_id", req.stream_id)
            raise
        return remote
