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

from ..protocol.errors import GatewayError
from .http_api import _json_body, _parse_chat, error_response
from .relay import Run

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["poll_events", "poll_start"]

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


def _polls(gw: Gateway) -> dict[str, tuple[Run, _PollWatch]]:
    polls = getattr(gw, "_polls", None)
    if polls is None:
        polls = gw._polls = {}  # type: ignore[attr-defined]
    return polls


async def poll_start(request: web.Request) -> web.Response:
    """Start a generation; the answer names it: ``{"id": stream_id, "model": …}``."""
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.authenticate_http(request)
        body = await _json_body(request, gw.settings.max_frame_bytes)
        chat, _, _ = _parse_chat(body, gw)
        chat.dialect = "v1"
        route = gw.router.resolve(chat.model)
        await gw.admit(principal, chat, route)
        run = await gw.registry.begin(chat, route, chat.conversation_id, False)
    except GatewayError as err:
        return error_response(err)
    watch = _PollWatch()
    run.subscribe(watch)
    polls = _polls(gw)
    sid = run.gen.stream_id
    polls[sid] = (run, watch)
    loop = asyncio.get_running_loop()
    idle = gw.settings.idle_timeout
    if idle > 0:
        watch.idle = loop.call_later(idle, run.cancel, "abandoned")

    def forget(_: Any) -> None:
        if watch.idle is not None:
            watch.idle.cancel()
            watch.idle = None
        watch.send(b"", 0, None)  # wake long polls still waiting
        loop.call_later(max(gw.settings.resume_retention, 30.0), polls.pop, sid, None)

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
        principal = await gw.authenticate_http(request)
        try:
            after = int(request.query.get("after", "-1"))
            wait = min(float(request.query.get("wait", "0")), MAX_WAIT)
        except ValueError:
            raise GatewayError("bad_request", '"after" must be an integer and "wait" a number of seconds') from None
        entry = _polls(gw).get(request.match_info["sid"])
        if entry is None:
            raise GatewayError("not_found", "no such polled generation (unknown, or ended too long ago)")
        run, watch = entry
        owner = getattr(run.chat.owner, "key_id", None)
        if owner is not None and getattr(principal, "key_id", None) != owner:
            # another key's generation: as if it did not exist (its id must have leaked)
            raise GatewayError("not_found", "no such polled generation (unknown, or ended too long ago)")
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
