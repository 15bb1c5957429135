"""Anthropic Messages API streaming (``POST /v1/messages`` with ``stream: true``).

:class:`AnthropicStreamParser` is pure (bytes in, events out), so tests drive it
byte by byte; :class:`AnthropicProvider` converts the OpenAI-style request the
gateway holds into Anthropic's shape and is the thin I/O around the parser.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from ..protocol import events as ev
from ..protocol.events import Event
from .base import ChatCall, StreamParser
from .openai import OpenAIProvider, parse_openai_error
from .wire import H1Stream

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "AnthropicStreamParser", "to_anthropic_request"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

#: Anthropic stop reasons in OpenAI's vocabulary (what clients already understand).
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: ``reasoning_effort`` as a thinking budget (tokens).
THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}

_loads = orjson.loads
_TOKEN = ev.TOKEN


class _Delta(msgspec.Struct, gc=False):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None


class _BlockDelta(msgspec.Struct, gc=False):
    """A ``content_block_delta`` event, the one that carries every token: only the fields read.

    Decoded by msgspec into untracked objects rather than by ``orjson.loads`` into two dicts
    (``gc=False``: decoded data forms no cycle), as the OpenAI parser's chunks are. Anything of
    another shape takes the tolerant path.
    """

    type: str | None = None
    index: int = -1
    delta: _Delta | None = None


_decode_block_delta = msgspec.json.Decoder(_BlockDelta).decode


class AnthropicStreamParser(StreamParser):
    """Turns a Messages event stream into provider-neutral events.

    Text deltas are tokens, thinking deltas are reasoning, ``tool_use`` blocks are
    tool-call deltas numbered 0, 1, … in order (as OpenAI numbers them, whatever
    content-block index Anthropic used); ``ping`` and ``signature_delta`` are
    dropped. Usage is emitted once, with the final ``message_delta``.
    """

    __slots__ = ("_input", "_tools")

    unit = "event"

    def __init__(self, provider: str = "anthropic") -> None:
        super().__init__(provider)  # done: ``message_stop`` seen
        self._tools: dict[int, int] = {}  #: content-block index -> tool-call index
        self._input: dict[str, Any] = {}

    def _handle(self, name: str, data: bytes, out: list[Event]) -> None:
        if self.done or name == "ping":
            return
        if name == "content_block_delta":  # once per token: the typed path
            try:
                event = _decode_block_delta(data)
            except msgspec.DecodeError:
                pass  # not this shape: the tolerant path below says what is wrong, or copes
            else:
                if event.type is None or event.type == "content_block_delta":
                    delta = event.delta
                    if delta is not None:
                        self._delta(delta.type, delta.text, delta.thinking, delta.partial_json, event.index, out)
                    return
        try:
            obj = _loads(data)
        except orjson.JSONDecodeError:
            out.append((ev.ERROR, self._bad(f"not JSON: {data[:80]!r}")))
            return
        if type(obj) is not dict:
            out.append((ev.ERROR, self._bad(f"not a JSON object: {data[:80]!r}")))
            return
        kind = obj.get("type") or name
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if type(delta) is dict:
                get = delta.get
                self._delta(get("type"), get("text"), get("thinking"), get("partial_json"), obj.get("index", -1), out)
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            btype = block.get("type")
            if btype == "tool_use" or btype == "server_tool_use":
                idx = len(self._tools)
                self._tools[obj.get("index", idx)] = idx
                out.append((ev.TOOL_CALL, {"index": idx, "id": block.get("id"), "name": block.get("name")}))
            elif btype == "text" and block.get("text"):
                out.append((ev.TOKEN, block["text"]))
            elif btype == "thinking" and block.get("thinking"):
                out.append((ev.REASONING, block["thinking"]))
        elif kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason:
                self.finished = True
                out.append((ev.FINISH, STOP_REASONS.get(reason, reason)))
            usage = obj.get("usage")
            if usage:
                self._input.update({k: v for k, v in usage.items() if v is not None})
                out.append((ev.USAGE, _usage(self._input)))
        elif kind == "message_start":
            message = obj.get("message") or {}
            usage = message.get("usage")
            if isinstance(usage, dict):
                self._input = {k: v for k, v in usage.items() if k != "output_tokens" and v is not None}
            if message.get("model"):
                out.append((ev.MODEL, message["model"]))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error" or name == "error":
            self.done = True  # nothing follows an error event
            out.append((ev.ERROR, parse_openai_error(self.provider, obj, in_stream=True)))

    def _delta(self, dtype: Any, text: Any, thinking: Any, partial_json: Any, index: Any, out: list[Event]) -> None:
        """One content block's delta (text, thinking or a tool call's arguments), from either path."""
        if dtype == "text_delta":
            if text and type(text) is str:
                out.append((_TOKEN, text))
        elif dtype == "thinking_delta":
            if thinking and type(thinking) is str:
                out.append((ev.REASONING, thinking))
        elif dtype == "input_json_delta":
            idx = self._tools.get(index) if type(index) is int else None
            if partial_json and idx is not None:
                out.append((ev.TOOL_CALL, {"index": idx, "arguments": partial_json}))


def _usage(u: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage in OpenAI's terms: prompt tokens include cache writes and reads."""
    cache_write = u.get("cache_creation_input_tokens") or 0
    cache_read = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cache_write + cache_read
    completion = u.get("output_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cache_read or cache_write:
        out["prompt_tokens_details"] = {"cached_tokens": cache_read, "cache_creation_tokens": cache_write}
    return out


# -- request conversion (pure) ----------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def _blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI content (a string or typed parts) as Anthropic content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media, _, data = url[5:].partition(";base64,")
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
            elif url:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw or "{}")
        except orjson.JSONDecodeError:
            return {"_raw": raw}
    return raw or {}


def to_anthropic_request(call: ChatCall) -> dict[str, Any]:
    """The gateway's OpenAI-style call as a Messages API body.

    System/developer turns become the top-level ``system``; tool results become
    user ``tool_result`` blocks; consecutive turns of one role are merged (the
    API requires alternation); ``max_tokens``, which Anthropic requires, defaults
    to 4096.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in call.messages:
        role = m.get("role")
        if role in ("system", "developer"):
            text = _text_of(m.get("content"))
            if text:
                system.append(text)
            continue
        if role == "tool":
            blocks = [
                {"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""), "content": _text_of(m.get("content"))}
            ]
            role = "user"
        else:
            blocks = _blocks(m.get("content"))
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": tc.get("id", ""),
                        "name": fn.get("name", ""),
                        "input": _arguments(fn.get("arguments")),
                    }
                )
            role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    p = call.params
    body: dict[str, Any] = {
        "model": call.model,
        "messages": turns,
        "max_tokens": p.get("max_tokens") or p.get("max_completion_tokens") or DEFAULT_MAX_TOKENS,
        "stream": True,
    }
    if system:
        body["system"] = "\n\n".join(system)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if p.get(ours) is not None:
            body[theirs] = p[ours]
    stop = p.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if p.get("user"):
        body["metadata"] = {"user_id": str(p["user"])}
    tools = p.get("tools")
    if tools:
        body["tools"] = [
            {
                "name": (t.get("function") or {}).get("name", ""),
                "description": (t.get("function") or {}).get("description", ""),
                "input_schema": (t.get("function") or {}).get("parameters") or {"type": "object", "properties": {}},
            }
            for t in tools
            if isinstance(t, dict)
        ]
    choice = p.get("tool_choice")
    if choice is not None:
        if choice == "required":
            body["tool_choice"] = {"type": "any"}
        elif choice in ("auto", "none"):
            body["tool_choice"] = {"type": choice}
        elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
            body["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    if p.get("parallel_tool_calls") is False and tools:
        body.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    effort = p.get("reasoning_effort")
    if effort in THINKING_BUDGET:
        budget = THINKING_BUDGET[effort]
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        body["max_tokens"] = max(body["max_tokens"], budget + 1024)  # the budget must fit below max_tokens
        body.pop("temperature", None)  # thinking refuses a temperature other than 1
    return body


class AnthropicProvider(OpenAIProvider):
    """Anthropic's own API (``x-api-key``, ``anthropic-version``).

    Subclasses the OpenAI provider only to share its error-body handling:
    Anthropic error bodies (``{"type":"error","error":{...}}``) have the same
    ``error`` object.
    """

    auth_header = "x-api-key"
    auth_prefix = ""

    def __init__(self, name: str, base_url: str, api_key: str | None, session: Any, headers: Any = None) -> None:
        super().__init__(name, base_url, api_key, session, {"anthropic-version": ANTHROPIC_VERSION, **(headers or {})})

    async def start(self, call: ChatCall) -> H1Stream:
        # ANTHROPIC_BASE_URL is often given as the SDK takes it, without /v1
        path = "/messages" if self.base_url.endswith("/v1") else "/v1/messages"
        return await self.stream(path, to_anthropic_request(call), AnthropicStreamParser(self.name), call.headers)
