"""OpenAI-compatible Chat Completions streaming (OpenAI, HolySheep, DeepSeek,
OpenRouter, vLLM, Ollama, llama.cpp server, …).

:class:`OpenAIStreamParser` is pure (bytes in, events out) and is what the
tests drive byte by byte; :class:`OpenAIProvider` is the thin I/O around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
import orjson

from ..protocol import events as ev
from ..protocol.errors import GatewayError
from ..protocol.events import Event
from .base import ChatCall, StreamParser, http_error, retry_after_seconds
from .http import HTTPUpstream
from .wire import H1Stream

__all__ = ["OpenAIProvider", "OpenAIStreamParser", "parse_openai_error"]

_DONE = b"[DONE]"
_TOKEN, _REASONING = ev.TOKEN, ev.REASONING  #: read per token: module constants, not attribute lookups
_loads = orjson.loads


class _Fn(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, gc=False):
    index: int = 0
    id: str | None = None
    function: _Fn | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct, gc=False):
    """Only the fields the relay reads: msgspec skips the rest without building objects
    (``obfuscation``, ``logprobs``, ``system_fingerprint``…), about twice as fast as a
    full ``orjson.loads`` of a typical chunk. ``gc=False`` on all of them: decoded data never
    forms a reference cycle, so the collector need not track the four objects a token makes
    (fewer young-generation passes; docs/benchmarks-load.md)."""

    choices: list[_Choice] | None = None
    usage: dict[str, Any] | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_DecodeError = msgspec.DecodeError


class OpenAIStreamParser(StreamParser):
    """Turns a ``chat.completion.chunk`` event stream into provider-neutral events.

    Handles what real providers send: ``usage`` in a last chunk with empty
    ``choices`` or inside the finish chunk, ``[DONE]`` present or absent,
    ``reasoning_content`` (DeepSeek) or ``reasoning`` (OpenRouter), tool-call
    deltas, content given as a list of parts (Mistral), and errors inside an
    HTTP 200 stream (``event: error`` as Groq sends it, or a top-level ``error``
    as OpenRouter does).
    """

    __slots__ = ()

    def __init__(self, provider: str = "upstream") -> None:
        super().__init__(provider)  # done: ``[DONE]`` seen

    def _handle(self, name: str, data: bytes, out: list[Event]) -> None:
        if self.done:
            return
        if data == _DONE:
            self.done = True
            return
        if name == "message":
            try:
                chunk = _decode_chunk(data)
            except _DecodeError:
                pass  # an unusual shape (content parts, odd types): the tolerant path below
            else:
                if chunk.error is None:  # the typed path, once per token: inline, no call of its own
                    choices = chunk.choices
                    if choices:
                        choice = choices[0]
                        delta = choice.delta
                        if delta is not None:
                            content = delta.content
                            if content:
                                out.append((_TOKEN, content))
                            reasoning = delta.reasoning_content or delta.reasoning
                            if reasoning:
                                out.append((_REASONING, reasoning))
                            if delta.tool_calls:
                                _typed_tool_calls(delta.tool_calls, out)
                        if choice.finish_reason:
                            self.finished = True
                            out.append((ev.FINISH, choice.finish_reason))
                    if chunk.usage:
                        out.append((ev.USAGE, chunk.usage))
                    return
        try:
            obj = _loads(data)
        except orjson.JSONDecodeError:
            out.append((ev.ERROR, self._bad(f"not JSON: {data[:80]!r}")))
            return
        if type(obj) is not dict:
            out.append((ev.ERROR, self._bad(f"not a JSON object: {data[:80]!r}")))
            return
        if name == "error" or obj.get("error"):
            out.append((ev.ERROR, parse_openai_error(self.provider, obj, in_stream=True)))
            return
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                content = delta.get("content")
                if content:
                    if type(content) is str:
                        out.append((ev.TOKEN, content))
                    else:
                        _content_parts(content, out)
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and type(reasoning) is str:
                    out.append((ev.REASONING, reasoning))
                calls = delta.get("tool_calls")
                if calls:
                    for call in calls:
                        out.append((ev.TOOL_CALL, _tool_delta(call)))
            reason = choice.get("finish_reason")
            if reason:
                self.finished = True
                out.append((ev.FINISH, reason))
        usage = obj.get("usage")
        if usage:
            out.append((ev.USAGE, usage))


def _typed_tool_calls(calls: list[_ToolCall], out: list[Event]) -> None:
    for call in calls:
        item: dict[str, Any] = {"index": call.index}
        if call.id:
            item["id"] = call.id
        fn = call.function
        if fn is not None:
            if fn.name:
                item["name"] = fn.name
            if fn.arguments:
                item["arguments"] = fn.arguments
        out.append((ev.TOOL_CALL, item))


def _content_parts(parts: Any, out: list[Event]) -> None:
    """Content as a list of typed parts (Mistral): text to the answer, thinking apart."""
    if not isinstance(parts, list):
        return
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and part.get("text"):
            out.append((ev.TOKEN, part["text"]))
        elif kind == "thinking":
            inner = part.get("thinking")
            if isinstance(inner, str) and inner:
                out.append((ev.REASONING, inner))
            elif isinstance(inner, list):
                for sub in inner:
                    if isinstance(sub, dict) and sub.get("text"):
                        out.append((ev.REASONING, sub["text"]))


def _tool_delta(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    delta: dict[str, Any] = {"index": call.get("index", 0)}
    if call.get("id"):
        delta["id"] = call["id"]
    if fn.get("name"):
        delta["name"] = fn["name"]
    if fn.get("arguments"):
        delta["arguments"] = fn["arguments"]
    return delta


def parse_openai_error(provider: str, body: Any, *, status: int | None = None, in_stream: bool = False) -> GatewayError:
    """An OpenAI-style error body (``{"error": {...}}``) as a gateway error."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or err.get("type") or "unknown error")
        kind = str(err.get("type") or err.get("code") or "")
        code = err.get("code")
        if status is None and isinstance(code, int):
            status = code
    elif isinstance(err, str):
        message, kind = err, ""
    else:
        message, kind = str(body)[:300], ""
    if status is not None and not in_stream:
        return http_error(provider, status, message)
    retryable = kind in ("overloaded_error", "server_error", "rate_limit_error", "api_error") or (
        status is not None and (status == 429 or status >= 500)
    )
    return GatewayError(
        "upstream_error",
        f"{provider} reported an error mid-stream: {message}",
        retryable=retryable,
        status=status,
        extra={"provider": provider, "upstream_type": kind} if kind else {"provider": provider},
    )


class OpenAIProvider(HTTPUpstream):
    """Any server that speaks OpenAI's ``POST /chat/completions`` with ``stream: true``."""

    async def start(self, call: ChatCall) -> H1Stream:
        body: dict[str, Any] = {
            "model": call.model,
            "messages": call.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if call.params:
            body.update(call.params)
        return await self.stream("/chat/completions", body, OpenAIStreamParser(self.name), call.headers)

    def error_for(self, status: int, headers: Mapping[str, str], raw: bytes) -> GatewayError:
        return error_from_response(self, status, headers, raw)

    async def list_models(self, timeout: float) -> list[str]:
        """The model ids the server lists at ``GET /models`` (OpenAI's ``{"data": [{"id": …}]}``).

        Raises :class:`GatewayError` when it has no such list, does not answer within
        ``timeout`` seconds, or answers with something else.
        """
        url = self.base_url + "/models"
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Accept"] = "application/json"
        try:
            async with self._session.get().get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                if resp.status != 200:
                    raise GatewayError("upstream_error", f"{self.name} answered GET /models with {resp.status}")
                raw = await resp.content.read(_MAX_MODEL_LIST)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.redact(
                GatewayError("upstream_unavailable", f"{self.name}: GET /models failed ({exc or 'timeout'})")
            ) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError("upstream_error", f"{self.name}: GET /models is not JSON") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise GatewayError("upstream_error", f"{self.name}: GET /models has no data list")
        ids: list[str] = []
        for item in data[:_MAX_MODELS]:
            mid = item.get("id") if isinstance(item, dict) else None
            if isinstance(mid, str) and 0 < len(mid) <= 200 and mid not in ids:
                ids.append(mid)
        return ids


_MAX_MODEL_LIST = 4 * 1024 * 1024  #: bytes of a /models answer read at most
_MAX_MODELS = 2000  #: model ids kept from one provider's list


def error_from_response(upstream: HTTPUpstream, status: int, headers: Mapping[str, str], raw: bytes) -> GatewayError:
    """A provider's HTTP error response as a gateway error: status, message, Retry-After kept,
    the key scrubbed. Reads OpenAI's ``{"error": …}``, Anthropic's and Gemini's (a list of one)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = {"error": {"message": raw.decode("utf-8", "replace").strip()[:500]}}
    if isinstance(body, list) and body:
        body = body[0]
    err = parse_openai_error(upstream.name, body, status=status)
    retry_after = retry_after_seconds(headers)
    if retry_after is not None:
        err.extra["retry_after"] = retry_after
    return upstream.redact(err)
