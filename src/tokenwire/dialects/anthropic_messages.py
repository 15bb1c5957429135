"""Anthropic Messages API: ``POST /v1/messages`` requests, its SSE events and ``message`` bodies.

The ``anthropic`` SDK and Claude Code (``ANTHROPIC_BASE_URL``) speak it. A request is
decoded into the OpenAI-style :class:`Chat` every provider path takes (the reverse of
``upstream.anthropic.to_anthropic_request``), so a Messages client can use any
upstream. A run's events become the stream ``messages.stream()`` accumulates::

    message_start
    content_block_start / content_block_delta… / content_block_stop   (one per block)
    message_delta (stop_reason, usage)
    message_stop

Blocks follow the order the answer arrives in (thinking, then text, then tool calls as
providers send them), each with its own index. Nothing is sent before the first answer
event, so a provider refusing up front is answered with an HTTP status; a failure once
output has begun is an ``event: error`` inside the 200.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from ..protocol.frames import Chat, Limits, validate_messages, validate_params

__all__ = [
    "STOP_REASONS",
    "MessageBuilder",
    "SSEEncoder",
    "error_body",
    "error_type",
    "model_list",
    "parse_request",
    "reasoning_effort",
    "stop_reason",
]

_dumps = orjson.dumps

#: the runtime's finish reasons in Anthropic's vocabulary (anything else: ``end_turn``)
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

#: request fields accepted and ignored (they change nothing here): routing, caching and
#: attribution hints of Anthropic's own service, and ``top_k``, which OpenAI-style providers lack
_IGNORED = frozenset(
    {
        "top_k",
        "cache_control",
        "container",
        "context_management",
        "diagnostics",
        "inference_geo",
        "mcp_servers",
        "service_tier",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)
#: ``output_config.effort`` as OpenAI's ``reasoning_effort`` (the top two have no OpenAI name)
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_KNOWN = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "stop_sequences",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "output_config",
        "stream",
    }
)


def _bad(message: str) -> GatewayError:
    return GatewayError("bad_request", message)


# -- requests -----------------------------------------------------------------------------


def reasoning_effort(budget: int) -> str:
    """A thinking budget (tokens) as OpenAI's ``reasoning_effort`` (the inverse of THINKING_BUDGET)."""
    if budget < 4096:
        return "low"
    if budget < 16384:
        return "medium"
    return "high"


def _text_blocks(value: Any, where: str, sep: str = "") -> str:
    """A string, or a list of text blocks, as one string (``system``, ``tool_result`` content)."""
    if isinstance(value, str):
        return value
    if type(value) is not list:
        raise _bad(f'"{where}" must be a string or a list of text blocks')
    parts = []
    for j, block in enumerate(value):
        if type(block) is not dict or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f'"{where}[{j}]" must be a text block ({{"type": "text", "text": …}})')
        parts.append(block["text"])
    return sep.join(parts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An image block as an OpenAI ``image_url`` part (providers that take images convert it back)."""
    source = block.get("source")
    if type(source) is not dict:
        raise _bad(f'"{where}.source" must be an object')
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad(f'"{where}.source" needs "media_type" and "data" strings')
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f'"{where}.source.type" {str(kind)[:40]!r} is not supported (use "base64" or "url")')


def _turn(i: int, m: Any) -> list[dict[str, Any]]:
    """One Messages turn as OpenAI-style messages (tool results become ``tool`` messages first)."""
    if type(m) is not dict:
        raise _bad(f'"messages[{i}]" must be an object')
    role = m.get("role")
    if role not in ("user", "assistant", "system"):
        raise _bad(f'"messages[{i}].role" must be "user", "assistant" or "system"')
    content = m.get("content")
    if role == "system":  # a system turn inside the conversation (the 2.x SDK's SystemMessageParam)
        return [{"role": "system", "content": _text_blocks(content, f"messages[{i}].content", "\n\n")}]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if type(content) is not list:
        raise _bad(f'"messages[{i}].content" must be a string or a list of content blocks')
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if type(block) is not dict:
            raise _bad(f'"{where}" must be an object')
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _bad(f'"{where}.text" must be a string')
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "tool_use":
            if role != "assistant":
                raise _bad(f'"{where}": tool_use blocks belong in assistant turns')
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _bad(f'"{where}" needs "id" and "name" strings')
            args = block.get("input", {})
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": _dumps(args).decode()},
                }
            )
        elif kind == "tool_result":
            if role != "user":
                raise _bad(f'"{where}": tool_result blocks belong in user turns')
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad(f'"{where}.tool_use_id" must be a string')
            result = block.get("content", "")
            if type(result) is list:
                if any(type(b) is dict and b.get("type") == "image" for b in result):
                    raise _bad(f'"{where}.content": images inside a tool_result are not supported')
            text = _text_blocks(result, f"{where}.content")
            if block.get("is_error") is True:
                text = "Error: " + text
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning is not sent back to a provider
        elif kind == "document":
            raise _bad(f'"{where}": document blocks are not supported')
        else:
            raise _bad(f'"{where}.type" {str(kind)[:40]!r} is not supported (text, image, tool_use, tool_result)')
    if role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": _flat(parts) if parts else (None if calls else "")}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    elif parts or not out:
        out.append({"role": "user", "content": _flat(parts)})
    return out


def _flat(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string (what every provider and the simulator read)."""
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tools(tools: Any) -> list[dict[str, Any]]:
    if type(tools) is not list:
        raise _bad('"tools" must be a list')
    out = []
    for i, t in enumerate(tools):
        if type(t) is not dict:
            raise _bad(f'"tools[{i}]" must be an object')
        kind = t.get("type")
        if kind not in (None, "custom"):
            raise _bad(f'"tools[{i}].type" {str(kind)[:40]!r}: server tools are not supported (only custom tools)')
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f'"tools[{i}].name" must be a non-empty string')
        schema = t.get("input_schema")
        if type(schema) is not dict:
            raise _bad(f'"tools[{i}].input_schema" must be an object (a JSON Schema)')
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, params: dict[str, Any]) -> None:
    if type(choice) is not dict:
        raise _bad('"tool_choice" must be an object ({"type": "auto" | "any" | "tool" | "none"})')
    kind = choice.get("type")
    if kind == "auto":
        params["tool_choice"] = "auto"
    elif kind == "any":
        params["tool_choice"] = "required"
    elif kind == "none":
        params["tool_choice"] = "none"
    elif kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _bad('"tool_choice.name" must be a string')
        params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad('"tool_choice.type" must be "auto", "any", "tool" or "none"')
    if choice.get("disable_parallel_tool_use") is True:
        params["parallel_tool_calls"] = False


def _output_config(output: Any, params: dict[str, Any]) -> None:
    if type(output) is not dict:
        raise _bad('"output_config" must be an object')
    effort = output.get("effort")
    if effort is not None:
        if effort not in _EFFORT:
            raise _bad('"output_config.effort" must be one of low, medium, high, xhigh, max')
        params["reasoning_effort"] = _EFFORT[effort]
    fmt = output.get("format")
    if fmt is not None:
        if type(fmt) is not dict or fmt.get("type") != "json_schema" or type(fmt.get("schema")) is not dict:
            raise _bad('"output_config.format" must be {"type": "json_schema", "schema": {…}}')
        params["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def parse_request(body: dict[str, Any], limits: Limits) -> tuple[Chat, bool]:
    """A ``/v1/messages`` body as a chat: ``(chat, stream)``. Raises GatewayError naming the field."""
    for key in body:
        if key not in _KNOWN and key not in _IGNORED:
            raise _bad(f'unknown field "{key[:40]}"')
    model = body.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 200:
        raise _bad('"model" is required (a non-empty string)')
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        raise _bad('"max_tokens" is required (an integer of at least 1)')
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad('"stream" must be true or false')
    raw = body.get("messages")
    if type(raw) is not list or not raw:
        raise _bad('"messages" is required (a non-empty list)')
    if len(raw) > limits.max_messages:
        raise _bad(f'"messages" has {len(raw)} items; the limit is {limits.max_messages}')
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system", "\n\n")
        if text:
            messages.append({"role": "system", "content": text})
    for i, m in enumerate(raw):
        messages.extend(_turn(i, m))

    params: dict[str, Any] = {"max_tokens": max_tokens}
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            raise _bad('"temperature" must be a number between 0 and 1')
        params["temperature"] = temperature
    if body.get("top_p") is not None:
        params["top_p"] = body["top_p"]
    stop = body.get("stop_sequences")
    if stop is not None:
        if type(stop) is not list or not all(isinstance(s, str) for s in stop):
            raise _bad('"stop_sequences" must be a list of strings')
        if stop:
            params["stop"] = stop
    if body.get("tools") is not None:
        tools = _tools(body["tools"])
        if tools:
            params["tools"] = tools
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], params)
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if type(thinking) is dict else None
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if type(budget) is not int or budget < 1:
                raise _bad('"thinking.budget_tokens" must be a positive integer')
            params["reasoning_effort"] = reasoning_effort(budget)
        elif kind in ("adaptive", "between_tools"):
            params["reasoning_effort"] = "medium"  # the model decides; output_config.effort, if given, wins
        elif kind != "disabled":
            raise _bad(
                '"thinking.type" must be "enabled" (with "budget_tokens"), "adaptive", "between_tools" or "disabled"'
            )
    output = body.get("output_config")
    if output is not None:
        _output_config(output, params)
    metadata = body.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            raise _bad('"metadata" must be an object')
        user = metadata.get("user_id")
        if isinstance(user, str) and user:
            params["user"] = user
    chat = Chat(
        id="http",
        model=model,
        messages=validate_messages(messages, limits),
        params=validate_params(params),
        dialect="anthropic",
    )
    return chat, stream


def model_list(
    models: list[dict[str, Any]], limit: int | None = None, after_id: str | None = None, before_id: str | None = None
) -> dict[str, Any]:
    """``GET /v1/models`` as Anthropic shapes it: one page (``limit``, after or before an id, as the
    SDK's auto-paging asks), tokenwire's own fields kept on each model."""
    ids = [m["id"] for m in models]
    backwards = before_id in ids and after_id not in ids  #: the page just before an id: its end is kept
    if after_id in ids:
        models = models[ids.index(after_id) + 1 :]
    elif backwards:
        models = models[: ids.index(before_id)]
    more = limit is not None and len(models) > limit
    if limit is not None and more:
        models = models[-limit:] if backwards else models[:limit]
    data = []
    for m in models:
        info: dict[str, Any] = {
            "type": "model",
            "id": m["id"],
            "display_name": m.get("display_name") or m["id"],
            "created_at": "1970-01-01T00:00:00Z",  # unknown: tokenwire's catalog has no release dates
        }
        if m.get("context_window"):
            info["max_input_tokens"] = m["context_window"]
        info.update({k: v for k, v in m.items() if k not in info and k not in ("object", "created")})
        data.append(info)
    return {
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# -- errors -------------------------------------------------------------------------------

#: HTTP status -> Anthropic's error type
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    410: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(err: GatewayError) -> str:
    status = err.http_status
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(err: GatewayError) -> dict[str, Any]:
    """Anthropic's error object: ``{"type": "error", "error": {"type": …, "message": …}}``."""
    message = err.to_openai()["error"]["message"]  # the message with secrets masked
    return {"type": "error", "error": {"type": error_type(err), "message": message}}


def stop_reason(end: dict[str, Any]) -> str:
    return STOP_REASONS.get(end.get("finish_reason") or "stop", "end_turn")


def _usage(end: dict[str, Any]) -> dict[str, Any]:
    usage = end.get("usage") or {}
    out: dict[str, Any] = {
        "input_tokens": usage.get("prompt_tokens") or 0,
        "output_tokens": usage.get("completion_tokens") or 0,
    }
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        if details.get("cache_creation_tokens") is not None:
            out["cache_creation_input_tokens"] = details["cache_creation_tokens"]
        if details.get("cached_tokens") is not None:
            out["cache_read_input_tokens"] = details["cached_tokens"]
    return out


def _tokenwire(end: dict[str, Any]) -> dict[str, Any]:
    """tokenwire's own account of the reply (the same fields as the OpenAI path's ``tokenwire``)."""
    return {k: end[k] for k in ("timing", "cost_usd", "provider", "status", "stored", "store_error") if k in end}


# -- streamed replies ---------------------------------------------------------------------

_TEXT, _THINKING, _TOOL = 1, 2, 3


def _event(name: bytes, obj: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + _dumps(obj) + b"\n\n"


def _block_stop(index: int) -> bytes:
    return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % index


class SSEEncoder:
    """A run's events as Messages stream events (``event: …`` + ``data: …``).

    ``message_start`` goes out with the first answer event (or at the end of an empty
    reply), never at ``start``. The open block's delta prefix is built once when the
    block opens, so a token costs one ``orjson.dumps`` and two concatenations.
    """

    __slots__ = ("block", "count", "index", "input_tokens", "message_id", "model", "prefix", "started", "tools")

    PING = b'event: ping\ndata: {"type":"ping"}\n\n'

    def __init__(self, stream_id: str, model: str, input_tokens: int = 0) -> None:
        self.message_id = "msg_" + stream_id
        self.model = model
        self.input_tokens = input_tokens
        self.started = False
        self.block = 0  #: kind of the open block (0: none)
        self.index = -1  #: index of the last block opened
        self.prefix = b""  #: the open block's content_block_delta up to its text/thinking value
        self.tools: dict[int, int] = {}  #: tool-call index -> content-block index
        #: how many non-empty encodings were handed out (the server pings when it stops moving)
        self.count = 0

    def _head(self) -> bytes:
        self.started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def _open(self, kind: int, block: dict[str, Any]) -> bytes:
        """Close the open block (if any) and start a new one; the bytes for both."""
        out = b"" if self.started else self._head()
        if self.block:
            out += _block_stop(self.index)
        self.index += 1
        self.block = kind
        out += _event(
            b"content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )
        if kind == _TEXT:
            self.prefix = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"text_delta","text":' % self.index
            )
        elif kind == _THINKING:
            self.prefix = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"thinking_delta","thinking":' % self.index
            )
        return out

    def _tool(self, delta: dict[str, Any]) -> bytes:
        call = delta.get("index", 0)
        index = self.tools.get(call)
        out = b""
        if index is None:
            block = {
                "type": "tool_use",
                "id": delta.get("id") or f"toolu_{self.message_id[4:]}_{call}",
                "name": delta.get("name") or "",
                "input": {},
            }
            out = self._open(_TOOL, block)
            index = self.tools[call] = self.index
        args = delta.get("arguments")
        if args:
            # a provider interleaving parallel calls: the delta names its own block's index
            out += _event(
                b"content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": args},
                },
            )
        return out

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        if kind == TOKEN:
            self.count += 1
            if self.block == _TEXT:
                return self.prefix + _dumps(value) + b"}}\n\n"
            return self._open(_TEXT, {"type": "text", "text": ""}) + self.prefix + _dumps(value) + b"}}\n\n"
        if kind == REASONING:
            self.count += 1
            if self.block == _THINKING:
                return self.prefix + _dumps(value) + b"}}\n\n"
            head = self._open(_THINKING, {"type": "thinking", "thinking": "", "signature": ""})
            return head + self.prefix + _dumps(value) + b"}}\n\n"
        if kind == TOOL_CALL:
            self.count += 1
            return self._tool(value) or None
        if kind == START:
            return None
        if kind == ERROR:
            self.count += 1
            return _event(b"error", error_body(value))
        if kind == END:
            if value.get("finish_reason") == "error":
                return None  # the error event was the last word
            self.count += 1
            out = b"" if self.started else self._head()
            if self.block:
                out += _block_stop(self.index)
                self.block = 0
            delta = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(value), "stop_sequence": None},
                "usage": _usage(value),
                "tokenwire": _tokenwire(value),
            }
            return out + _event(b"message_delta", delta) + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        return None


# -- whole replies ------------------------------------------------------------------------


class MessageBuilder:
    """Gathers a whole reply for a non-streamed request; :meth:`body` is the ``message`` object."""

    __slots__ = ("blocks", "end", "error", "tools")

    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] = []
        self.tools: dict[int, dict[str, Any]] = {}  #: tool-call index -> its block (arguments as a string)
        self.error: GatewayError | None = None
        self.end: dict[str, Any] | None = None

    def send(self, rest: bytes, kind: int, value: Any) -> None:
        blocks = self.blocks
        if kind == TOKEN:
            if blocks and blocks[-1]["type"] == "text":
                blocks[-1]["text"] += value
            else:
                blocks.append({"type": "text", "text": value})
        elif kind == REASONING:
            if blocks and blocks[-1]["type"] == "thinking":
                blocks[-1]["thinking"] += value
            else:
                blocks.append({"type": "thinking", "thinking": value, "signature": ""})
        elif kind == TOOL_CALL:
            call = value.get("index", 0)
            block = self.tools.get(call)
            if block is None:
                block = self.tools[call] = {
                    "type": "tool_use",
                    "id": value.get("id") or "",
                    "name": value.get("name") or "",
                    "input": "",
                }
                blocks.append(block)
            elif value.get("name") and not block["name"]:
                block["name"] = value["name"]
            if value.get("arguments"):
                block["input"] += value["arguments"]
        elif kind == ERROR:
            self.error = value
        elif kind == END:
            self.end = value

    def body(self, stream_id: str, model: str) -> dict[str, Any]:
        end = self.end or {}
        content = []
        for block in self.blocks:
            if block["type"] == "tool_use":
                raw = block["input"] or "{}"
                try:
                    args = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    args = {"_raw": raw}
                block = {**block, "input": args, "id": block["id"] or f"toolu_{stream_id}_{len(content)}"}
            content.append(block)
        return {
            "id": "msg_" + stream_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason(end),
            "stop_sequence": None,
            "usage": _usage(end),
            "tokenwire": _tokenwire(end),
        }
