"""OpenAI Chat Completions: ``chat.completion.chunk`` streams and ``chat.completion`` bodies.

Three clients speak it: the ``openai`` SDK over HTTP (SSE when ``stream: true``, one
JSON body otherwise), and seed 000's client over the WebSocket (the same chunk
objects, one per frame). This module decodes their requests and encodes a run's
events for each; the server does the I/O.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from ..protocol.frames import Chat, Limits, validate_messages, validate_params

__all__ = [
    "ChunkEncoder",
    "CompletionBuilder",
    "SSEChunkEncoder",
    "error_body",
    "parse_request",
    "tool_call",
]

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
#: fields read by :func:`parse_request` itself (the rest are sampling parameters)
_OWN = frozenset({"model", "messages", "stream", "conversation_id", "stream_id"})

_dumps = orjson.dumps


#: the ``end`` fields a non-streamed body carries under "tokenwire" (``stored``: false when the turn was not saved)
_END_META = ("timing", "cost_usd", "provider", "status", "stored", "store_error")


def _refuse_unserved(key: str, value: Any) -> None:
    """Fields whose answer would be silently wrong without them: refused, not ignored.

    Legacy function calling would never get its ``function_call`` back, and audio output would
    come back as text only; the rest of ``_IGNORED`` changes nothing a client relies on (a
    ``logprobs`` request gets ``logprobs: null``, which the API allows)."""
    if value is None:
        return
    if key == "n" and (type(value) is not int or value != 1):
        raise GatewayError("bad_request", '"n" other than 1 is not supported')
    if key in ("functions", "function_call"):
        raise GatewayError("bad_request", f'"{key}" (legacy function calling) is not supported: send "tools"')
    if key == "audio" or (key == "modalities" and value != ["text"]):
        raise GatewayError("bad_request", f'"{key}": only text output is supported')
    if key == "stream_options" and type(value) is not dict:
        raise GatewayError("bad_request", '"stream_options" must be an object')


def parse_request(body: dict[str, Any], limits: Limits) -> tuple[Chat, bool, bool]:
    """A ``/v1/chat/completions`` body as a chat: ``(chat, stream, include_usage)``."""
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in _OWN:
            continue
        if key in _IGNORED:
            _refuse_unserved(key, value)
            continue
        params[key] = value
    params = validate_params(params, None, limits, fields=(*sorted(_OWN), *sorted(_IGNORED)))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError("bad_request", '"stream" must be true or false')
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))  # an object (checked above)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise GatewayError("bad_request", '"model" must be a non-empty string (leave it out for the default model)')
    if "messages" not in body:
        raise GatewayError("bad_request", '"messages" is required')
    chat = Chat(
        id="http",
        model=model,
        messages=validate_messages(body["messages"], limits),
        params=params,
        dialect="openai",
    )
    conv = body.get("conversation_id")
    if conv is not None:
        if not isinstance(conv, str) or not 0 < len(conv) <= 128:
            raise GatewayError("bad_request", '"conversation_id" must be a string of 1-128 characters')
        chat.conversation_id = conv
    return chat, stream, include_usage


def error_body(err: GatewayError) -> dict[str, Any]:
    """OpenAI's error object (``{"error": {...}}``)."""
    return err.to_openai()


def tool_call(delta: dict[str, Any]) -> dict[str, Any]:
    """A tool-call delta in OpenAI's ``delta.tool_calls[]`` shape."""
    call: dict[str, Any] = {"index": delta.get("index", 0)}
    if "id" in delta:
        call["id"] = delta["id"]
        call["type"] = "function"
    call["function"] = {k: delta[k] for k in ("name", "arguments") if k in delta}
    return call


def _finish_reason(end: dict[str, Any]) -> bytes:
    reason = end.get("finish_reason") or "stop"
    return _dumps("stop" if reason == "cancelled" else reason)


class ChunkEncoder:
    """One ``chat.completion.chunk`` object per event (seed 000's socket dialect)."""

    __slots__ = ("head",)

    def __init__(self, stream_id: str, model: str, created: int | None = None) -> None:
        self.head = b'{"id":"chatcmpl-%b","object":"chat.completion.chunk","created":%d,"model":%b,' % (
            stream_id.encode(),
            int(time.time()) if created is None else created,
            _dumps(model),
        )

    def chunk(self, delta: bytes, finish: bytes = b"null", extra: bytes = b"") -> bytes:
        return (
            self.head + b'"choices":[{"index":0,"delta":' + delta + b',"finish_reason":' + finish + b"}]" + extra + b"}"
        )

    def delta(self, kind: int, value: Any) -> bytes | None:
        """The chunk of an answer event (token, reasoning, tool call), or None for other kinds."""
        if kind == TOKEN:
            return self.chunk(b'{"content":' + _dumps(value) + b"}")
        if kind == REASONING:
            return self.chunk(b'{"reasoning_content":' + _dumps(value) + b"}")
        if kind == TOOL_CALL:
            return self.chunk(b'{"tool_calls":[' + _dumps(tool_call(value)) + b"]}")
        return None

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        if kind == START:
            return self.chunk(b'{"role":"assistant","content":""}')
        if kind == ERROR:
            return _dumps(value.to_openai())
        if kind == END:
            if value.get("finish_reason") == "error":
                return None  # the error object was the last word
            return self.chunk(b"{}", _finish_reason(value), b',"usage":' + _dumps(value.get("usage")))
        return self.delta(kind, value)


class SSEChunkEncoder:
    """The same chunks as Server-Sent Events (``data: …``), ending with ``data: [DONE]``.

    The role chunk goes out with the first answer event, not at ``start``, so that a
    provider refusing the request up front can still be answered with an HTTP status.
    With ``include_usage`` (``stream_options``) a last chunk with empty ``choices``
    carries the usage, as OpenAI sends it.
    """

    __slots__ = ("chunks", "include_usage", "sent_role")

    def __init__(self, stream_id: str, model: str, include_usage: bool = False) -> None:
        self.chunks = ChunkEncoder(stream_id, model)
        self.include_usage = include_usage
        self.sent_role = False

    def _role(self) -> bytes:
        if self.sent_role:
            return b""
        self.sent_role = True
        return b"data: " + self.chunks.chunk(b'{"role":"assistant","content":""}') + b"\n\n"

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        if kind == START:
            return None
        if kind == ERROR:
            return b"data: " + _dumps(value.to_openai()) + b"\n\n"
        if kind == END:
            out = b""
            if value.get("finish_reason") != "error":
                out = b"data: " + self.chunks.chunk(b"{}", _finish_reason(value)) + b"\n\n"
                if self.include_usage:
                    out += b"data: " + self.chunks.head + b'"choices":[],"usage":' + _dumps(value["usage"]) + b"}\n\n"
            return out + b"data: [DONE]\n\n"
        chunk = self.chunks.delta(kind, value)
        if chunk is None:
            return None
        role = self._role()
        return role + b"data: " + chunk + b"\n\n" if role else b"data: " + chunk + b"\n\n"


class CompletionBuilder:
    """Gathers a whole reply for a non-streamed request; :meth:`body` is the ``chat.completion``."""

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

    @property
    def refused(self) -> GatewayError | None:
        """The error to answer with an HTTP status: the run failed, before or after some text.

        A reply cut short by a failure is not passed off as a whole one (a 200 with
        ``finish_reason: "stop"``): the client could not tell it from a complete answer. As the
        Anthropic dialect does; a streamed reply says it in the stream instead."""
        return self.error

    def body(self, stream_id: str, model: str) -> dict[str, Any]:
        end = self.end or {}
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tools:
            message["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        reason = end.get("finish_reason") or "stop"
        return {
            "id": "chatcmpl-" + stream_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "stop" if reason in ("cancelled", "error") else reason,
                }
            ],
            "usage": end.get("usage"),
            "tokenwire": {
                k: end.get(k) for k in ("timing", "cost_usd", "provider", "status", "stored", "store_error") if k in end
            },
        }
