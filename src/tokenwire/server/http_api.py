"""OpenAI-compatible HTTP: ``POST /v1/chat/completions`` (SSE and JSON) and ``GET /v1/models``.

The same :class:`~tokenwire.server.relay.Run` serves these as the WebSocket, so
existing code using the ``openai`` SDK works by changing only ``base_url``.
Headers are sent only when the first event arrives: a provider that refuses
the request up front yields a real HTTP error status, not a 200 with an error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..protocol.errors import GatewayError
from ..protocol.frames import Chat, validate_messages, validate_params
from .relay import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from .ws import openai_tool_call

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["chat_completions", "error_response", "list_models"]

#: OpenAI request fields accepted and ignored (they change nothing here).
_IGNORED = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "logprobs",
        "top_logprobs",
        "stream_options",
        "n",
        "modalities",
        "prediction",
        "audio",
        "function_call",
        "functions",
    }
)


def error_response(err: GatewayError) -> web.Response:
    headers = {}
    retry_after = err.extra.get("retry_after")
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(float(retry_after))))
    return web.Response(
        body=orjson.dumps(err.to_openai()),
        status=err.http_status,
        content_type="application/json",
        headers=headers,
    )


class _SSESubscriber:
    """Writes ``data: <chunk>`` events; prepares the response on the first real event."""

    __slots__ = ("created", "error", "head", "include_usage", "request", "resp", "sent_role")

    def __init__(self, request: web.Request, stream_id: str, model: str, include_usage: bool):
        self.request = request
        self.resp: web.StreamResponse | None = None
        self.error: GatewayError | None = None
        self.include_usage = include_usage
        self.created = int(time.time())
        self.sent_role = False
        self.head = b'data: {"id":"chatcmpl-%b","object":"chat.completion.chunk","created":%d,"model":%b,' % (
            stream_id.encode(),
            self.created,
            orjson.dumps(model),
        )

    async def _open(self) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(self.request)
        self.resp = resp
        return resp

    def _chunk(self, delta: bytes, finish: bytes = b"null", tail: bytes = b"") -> bytes:
        return (
            self.head
            + b'"choices":[{"index":0,"delta":'
            + delta
            + b',"finish_reason":'
            + finish
            + b"}]"
            + tail
            + b"}\n\n"
        )

    def send(self, rest: bytes, kind: int, value: Any) -> Awaitable[None] | None:
        return None if kind == START else self._send(kind, value)

    async def _send(self, kind: int, value: Any) -> None:
        resp = self.resp
        if kind == ERROR:
            if resp is None:
                self.error = value  # nothing sent yet: the handler answers with a status
                return
            await resp.write(b"data: " + orjson.dumps(value.to_openai()) + b"\n\n")
            return
        if kind == END:
            if resp is None:
                if self.error is not None:
                    return
                resp = await self._open()
            if value.get("finish_reason") != "error":
                reason = value.get("finish_reason") or "stop"
                if reason == "cancelled":
                    reason = "stop"
                out = self._chunk(b"{}", orjson.dumps(reason))
                if self.include_usage:
                    out += self.head + b'"choices":[],"usage":' + orjson.dumps(value["usage"]) + b"}\n\n"
                await resp.write(out)
            await resp.write(b"data: [DONE]\n\n")
            return
        if resp is None:
            resp = await self._open()
        if not self.sent_role:
            self.sent_role = True
            await resp.write(self._chunk(b'{"role":"assistant","content":""}'))
        if kind == TOKEN:
            await resp.write(self._chunk(b'{"content":' + orjson.dumps(value) + b"}"))
        elif kind == REASONING:
            await resp.write(self._chunk(b'{"reasoning_content":' + orjson.dumps(value) + b"}"))
        elif kind == TOOL_CALL:
            await resp.write(self._chunk(b'{"tool_calls":[' + orjson.dumps(openai_tool_call(value)) + b"]}"))


class _Collector:
    """Gathers a whole reply for a non-streamed request."""

    __slots__ = ("end", "error", "reasoning", "text", "tools")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.error: GatewayError | None = None
        self.end: dict[str, Any] | None = None

    def send(self, rest: bytes, kind: int, value: Any) -> None:
        if kind == TOKEN:
            self.text.append(value)
        elif kind == REASONING:
            self.reasoning.append(value)
        elif kind == TOOL_CALL:
            call = self.tools.setdefault(
                value.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if "id" in value:
                call["id"] = value["id"]
            if "name" in value:
                call["function"]["name"] += value["name"]
            if "arguments" in value:
                call["function"]["arguments"] += value["arguments"]
        elif kind == ERROR:
            self.error = value
        elif kind == END:
            self.end = value


async def _json_body(request: web.Request, limit: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError("frame_too_large", f"request body is over the {limit}-byte limit")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise GatewayError("frame_too_large", f"request body is over the {limit}-byte limit")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError("invalid_json", f"request body is not valid JSON: {exc}") from None
    if type(body) is not dict:
        raise GatewayError("bad_request", "request body must be a JSON object")
    return body


def _parse_chat(body: dict[str, Any], gw: Gateway) -> tuple[Chat, bool, bool]:
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("model", "messages", "stream", "conversation_id", "stream_id"):
            continue
        if key in _IGNORED:
            if key == "n" and value not in (None, 1):
                raise GatewayError("bad_request", '"n" other than 1 is not supported')
            continue
        params[key] = value
    params = validate_params(params)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError("bad_request", '"stream" must be true or false')
    opts = body.get("stream_options") or {}
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise GatewayError("bad_request", '"model" must be a string')
    if "messages" not in body:
        raise GatewayError("bad_request", '"messages" is required')
    chat = Chat(
        id="http",
        model=model,
        messages=validate_messages(body["messages"], gw.limits),
        params=params,
        dialect="openai",
    )
    conv = body.get("conversation_id")
    if conv is not None:
        if not isinstance(conv, str) or not 0 < len(conv) <= 128:
            raise GatewayError("bad_request", '"conversation_id" must be a string of 1-128 characters')
        chat.conversation_id = conv
    return chat, stream, include_usage


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    try:
        principal = await gw.authenticate_http(request)
        body = await _json_body(request, gw.settings.max_frame_bytes)
        chat, stream, include_usage = _parse_chat(body, gw)
        route = gw.router.resolve(chat.model)
        await gw.admit(principal, chat, route)
        run = await gw.registry.begin(chat, route, chat.conversation_id, False)
    except GatewayError as err:
        return error_response(err)
    if stream:
        sub = _SSESubscriber(request, run.gen.stream_id, route.model, include_usage)
        run.subscribe(sub)
        await run.ended.wait()
        if sub.resp is None:
            return error_response(sub.error or GatewayError("internal_error", "no reply"))
        await sub.resp.write_eof()
        return sub.resp
    col = _Collector()
    run.subscribe(col)
    await run.ended.wait()
    if col.error is not None and not col.text:
        return error_response(col.error)
    end = col.end or {}
    message: dict[str, Any] = {"role": "assistant", "content": "".join(col.text)}
    if col.reasoning:
        message["reasoning_content"] = "".join(col.reasoning)
    if col.tools:
        message["tool_calls"] = [col.tools[i] for i in sorted(col.tools)]
    reason = end.get("finish_reason") or "stop"
    body = {
        "id": "chatcmpl-" + run.gen.stream_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": route.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "stop" if reason in ("cancelled", "error") else reason,
            }
        ],
        "usage": end.get("usage"),
        "tokenwire": {k: end.get(k) for k in ("timing", "cost_usd", "provider", "status") if k in end},
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    try:
        await gw.authenticate_http(request)
    except GatewayError as err:
        return error_response(err)
    return web.Response(
        body=orjson.dumps({"object": "list", "data": gw.router.models(), "aliases": gw.router.alias_map()}),
        content_type="application/json",
    )
