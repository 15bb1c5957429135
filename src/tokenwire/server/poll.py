"""HTTP polling: ``POST /v1/poll/start`` then ``GET /v1/poll/{id}?after=SEQ[&wait=S]``.

For clients that can hold neither a WebSocket nor an SSE response (and for
``tokenwire bench --transport poll``, which measures what polling costs). A
poll returns every event with ``seq > after`` in the v1 shape (without ``id``),
from the generation's own log, so nothing is lost between polls and each event
is returned once per ``after``. With ``wait`` (seconds, at most 30) the request
is held until something new arrives (long polling).

A :class:`_PollWatch` stays subscribed for the whole generation, so the relay
never sees "nobody watching" between polls; a generation nobody polls for
``idle_timeout`` seconds is cancelled. Ended generations stay readable for
``resume_retention`` seconds (at least 30).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..dialects import openai_chat
from ..protocol.errors import GatewayError
from ..runtime.ownership import owns
from ..runtime.relay import Run, stream_key
from .errors import error_response
from .http_api import read_json_body

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["POLLS", "poll_events", "poll_start"]

POLLS = "tokenwire.polls"  #: app key of the polled generations, by key-scoped stream id (relay.stream_key)

MAX_WAIT = 30.0


class _PollWatch:
    """A subscriber that only wakes long polls; the events themselves are read from the log."""

    __slots__ = ("idle", "waiters")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []
        self.idle: asyncio.TimerHandle | None = None

    def send(self, rest: bytes, kind: int, value: Any) -> None:
        if self.waiters:
            for fut in self.waiters:
                if not fut.done():
                    fut.set_result(None)
            self.waiters.clear()


Polls = dict[str, tuple[Run, _PollWatch]]

_UNKNOWN = "no such polled generation (unknown, or ended too long ago)"


async def poll_start(request: web.Request) -> web.Response:
    """Start a generation; the answer names it: ``{"id": stream_id, "model": …}``."""
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_http(request)
        body = await read_json_body(request, gw.settings.max_frame_bytes)
        chat, _, _ = openai_chat.parse_request(body, gw.limits)
        chat.dialect = "v1"
        run = await gw.start_chat(principal, chat, conversation_id=chat.conversation_id)
    except GatewayError as err:
        return error_response(err)
    route = run.route
    watch = _PollWatch()
    run.subscribe(watch)
    polls: Polls = request.app[POLLS]
    sid = run.gen.stream_id
    key = run.key  # scoped per API key: two keys may choose the same stream id
    polls[key] = (run, watch)
    loop = asyncio.get_running_loop()
    idle = gw.settings.idle_timeout
    if idle > 0:
        watch.idle = loop.call_later(idle, run.cancel, "abandoned")

    def forget(_: Any) -> None:
        if watch.idle is not None:
            watch.idle.cancel()
            watch.idle = None
        watch.send(b"", 0, None)  # wake long polls still waiting
        loop.call_later(max(gw.settings.resume_retention, 30.0), polls.pop, key, None)

    assert run.task is not None
    run.task.add_done_callback(forget)
    return web.Response(
        body=orjson.dumps({"id": sid, "model": route.model, "provider": route.provider.name}),
        content_type="application/json",
    )


async def poll_events(request: web.Request) -> web.Response:
    """Events after ``after`` (default -1: from ``start``); ``done`` once ``end`` is included."""
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.access.authenticate_http(request)
        try:
            after = int(request.query.get("after", "-1"))
            wait = min(float(request.query.get("wait", "0")), MAX_WAIT)
        except ValueError:
            raise GatewayError("bad_request", '"after" must be an integer and "wait" a number of seconds') from None
        entry = request.app[POLLS].get(stream_key(request.match_info["sid"], principal))
        # another key's generation: as if it did not exist (its id must have leaked)
        if entry is None or not owns(principal, entry[0]):
            raise GatewayError("not_found", _UNKNOWN)
        run, watch = entry
        gen = run.gen
        if watch.idle is not None and not gen.ended:
            watch.idle.cancel()
            idle = gw.settings.idle_timeout
            watch.idle = asyncio.get_running_loop().call_later(idle, run.cancel, "abandoned")
        if wait > 0 and gen.seq <= after and not gen.ended:
            fut = asyncio.get_running_loop().create_future()
            watch.waiters.append(fut)
            try:
                await asyncio.wait_for(fut, wait)
            except TimeoutError:
                pass
        rests = gen.after(after)
    except GatewayError as err:
        return error_response(err)
    done = gen.ended and (not rests or gen.seq == after + len(rests))
    body = b'{"events":[' + b",".join(b"{" + r for r in rests) + b'],"done":' + (b"true" if done else b"false")
    body += b',"next_after":%d}' % (after + len(rests))
    return web.Response(body=body, content_type="application/json")
