"""Parse and validate what a client sends over the WebSocket (no I/O).

One function, :func:`parse_frame`, turns a text frame into a typed request or
raises :class:`GatewayError` with a message that says what to fix. Three
dialects arrive on the same socket:

* protocol v1: ``{"type": "chat" | "cancel" | "pause" | "resume" | "ping" | "attach", …}``
* seed 002's browser client: ``{"content": "…", "system": "…"}`` (no ``type``)
* seed 000's OpenAI-shaped client: ``{"model": …, "messages": […], "stream": true}``
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any, Literal

import orjson

from .errors import GatewayError
from .tracecontext import parse_traceparent

__all__ = [
    "Attach",
    "Cancel",
    "Chat",
    "Limits",
    "Pause",
    "Ping",
    "Resume",
    "parse_frame",
    "validate_messages",
    "validate_params",
]

Dialect = Literal["v1", "openai", "seed", "anthropic"]

_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_STREAM_ID_RE = re.compile(r"[A-Za-z0-9_\-]{8,64}")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

#: Sampling parameters passed to the provider, with the JSON types each accepts.
_PARAMS: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "stop": (str, list),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "seed": (int,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,),
    "response_format": (dict,),
    "reasoning_effort": (str,),
    "logit_bias": (dict,),
    "user": (str,),
}


@dataclass(slots=True)
class Limits:
    """Input limits the parser enforces."""

    max_frame_bytes: int = 1024 * 1024
    max_messages: int = 1000
    #: the largest ``max_tokens`` a client may ask for (a provider that ignores it is cut there too)
    max_output_tokens: int = 1_000_000


#: caps on the shapes of client-sent parameters (what real APIs accept, with room)
MAX_STOP = 16
MAX_STOP_CHARS = 1_000
MAX_TOOLS = 128


@dataclass(slots=True)
class Chat:
    id: str
    model: str | None
    messages: list[dict[str, Any]] | None = None
    content: str | None = None
    system: str | None = None
    conversation_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stream_id: str | None = None
    dialect: Dialect = "v1"
    #: who asked (set by the access policy at admission, never by a client); usage is charged to it
    owner: Any = field(default=None, repr=False, compare=False)
    #: set at admission when max_tokens was cut to what a limit leaves ("budget" or "tpm")
    cut_by: str | None = None
    #: the caller's W3C ``traceparent`` (checked), the parent of the generation's span when tracing is on
    traceparent: str | None = None


@dataclass(slots=True)
class Cancel:
    id: str


@dataclass(slots=True)
class Pause:
    id: str | None


@dataclass(slots=True)
class Resume:
    id: str | None


@dataclass(slots=True)
class Ping:
    data: Any = None


@dataclass(slots=True)
class Attach:
    """Re-attach to a generation after a reconnect: events after ``last_seq`` are replayed."""

    id: str
    stream_id: str
    last_seq: int


Request = Chat | Cancel | Pause | Resume | Ping | Attach


def _bad(message: str, id: str | None = None, code: str = "bad_request") -> GatewayError:
    return GatewayError(code, message, extra={"id": id} if id is not None else None)


def parse_frame(text: str | bytes, limits: Limits, next_id: int = 0) -> Request:
    """Parse one text frame. ``next_id`` names generations of dialects that send no id."""
    size = len(text)
    if size > limits.max_frame_bytes // 4 and isinstance(text, str):
        size = len(text.encode("utf-8", "surrogatepass"))  # a character may take up to 4 bytes
    if size > limits.max_frame_bytes:
        raise _bad(
            f"frame of {size} bytes is over the {limits.max_frame_bytes}-byte limit",
            code="frame_too_large",
        )
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"frame is not valid JSON: {exc}", code="invalid_json") from None
    if type(obj) is not dict:
        raise _bad(f"frame must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    raw_id = obj.get("id")
    id = raw_id if isinstance(raw_id, str) else None
    if kind is None:
        if "messages" in obj:
            return _chat(obj, limits, "openai", _auto_id(raw_id, next_id))
        if "content" in obj:
            return _chat(obj, limits, "seed", _auto_id(raw_id, next_id))
        raise _bad('frame has no "type" (expected "chat", "cancel", "pause", "resume", "ping" or "attach")')
    if kind == "chat":
        return _chat(obj, limits, "v1", _auto_id(raw_id, next_id))
    if kind == "ping":
        return Ping(obj.get("data"))
    if kind == "cancel":
        return Cancel(_require_id(raw_id, "cancel"))
    if kind in ("pause", "resume"):
        if raw_id is not None:
            _check_id(raw_id)
        return Pause(raw_id) if kind == "pause" else Resume(raw_id)
    if kind == "attach":
        gen_id = _auto_id(raw_id, next_id)
        stream_id = obj.get("stream_id")
        if not isinstance(stream_id, str) or not _STREAM_ID_RE.fullmatch(stream_id):
            raise _bad('"attach" needs "stream_id", the handle from the "start" event', gen_id)
        last_seq = obj.get("last_seq", -1)
        if type(last_seq) is not int or last_seq < -1:
            raise _bad('"last_seq" must be an integer >= -1', gen_id)
        return Attach(gen_id, stream_id, last_seq)
    if not isinstance(kind, str):
        raise _bad('"type" must be a string', id)
    raise _bad(
        f'unknown frame type "{kind[:40]}" (expected chat, cancel, pause, resume, ping, attach)',
        id,
        code="unknown_type",
    )


def _check_id(raw: Any) -> str:
    if not isinstance(raw, str) or not _ID_RE.fullmatch(raw):
        raise _bad('"id" must be a string of 1-128 letters, digits or "_.:-"')
    return raw


def _require_id(raw: Any, kind: str) -> str:
    if raw is None:
        raise _bad(f'"{kind}" needs the "id" of a generation')
    return _check_id(raw)


def _auto_id(raw: Any, next_id: int) -> str:
    if raw is None:
        return f"g{next_id}"
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    return _check_id(raw)


#: the fields of a v1 ``chat`` frame; anything else is refused (a typo must not be dropped silently)
V1_CHAT_FIELDS = (
    "type",
    "id",
    "model",
    "messages",
    "content",
    "system",
    "conversation_id",
    "stream_id",
    "params",
    "traceparent",
)


def closest(name: str, known: Any) -> str | None:
    """The known name closest to ``name`` (a likely typo), or None."""
    close = get_close_matches(name, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def did_you_mean(name: str, known: Any) -> str:
    """`` (did you mean "model"?)`` when a known name is close to ``name``, else ``""``."""
    near = closest(name, known)
    return f' (did you mean "{near}"?)' if near else ""


def _check_v1_fields(obj: dict[str, Any], id: str) -> None:
    for key in obj:
        if key in V1_CHAT_FIELDS:
            continue
        name = str(key)[:40]
        if key in _PARAMS:
            raise _bad(f'"{name}" goes inside "params" in a chat frame: "params": {{"{name}": …}}', id)
        hint = did_you_mean(name, V1_CHAT_FIELDS)
        if not hint and (param := closest(name, _PARAMS)):
            hint = f' (did you mean "params": {{"{param}": …}}?)'
        raise _bad(f'unknown field "{name}" in a chat frame{hint} (fields: {", ".join(V1_CHAT_FIELDS)})', id)


def _chat(obj: dict[str, Any], limits: Limits, dialect: Dialect, id: str) -> Chat:
    if dialect == "v1":
        _check_v1_fields(obj, id)
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 200):
        raise _bad('"model" must be a non-empty string', id)
    chat = Chat(id=id, model=model, dialect=dialect)
    messages = obj.get("messages")
    content = obj.get("content")
    if messages is not None:
        chat.messages = validate_messages(messages, limits, id)
    if content is not None:
        if not isinstance(content, str):
            raise _bad('"content" must be a string', id)
        chat.content = content
    if chat.messages is None and chat.content is None:
        raise _bad('a chat needs "messages" (a list) or "content" (a string)', id)
    if chat.messages is not None and chat.content is not None:
        raise _bad('give either "messages" or "content", not both', id)
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _bad('"system" must be a string', id)
        chat.system = system
    conv = obj.get("conversation_id")
    if conv is not None:
        if not isinstance(conv, str) or not _ID_RE.fullmatch(conv):
            raise _bad('"conversation_id" must be 1-128 letters, digits or "_.:-"', id)
        chat.conversation_id = conv
    stream_id = obj.get("stream_id")
    if stream_id is not None:
        if not isinstance(stream_id, str) or not _STREAM_ID_RE.fullmatch(stream_id):
            raise _bad('"stream_id" must be 8-64 letters, digits, "_" or "-"', id)
        chat.stream_id = stream_id
    traceparent = obj.get("traceparent")
    if traceparent is not None:
        if parse_traceparent(traceparent) is None:
            raise _bad('"traceparent" must be a W3C traceparent: "00-<32 hex>-<16 hex>-<2 hex>", ids not all zero', id)
        chat.traceparent = traceparent.strip()
    params = obj.get("params")
    if params is not None:
        if type(params) is not dict:
            raise _bad('"params" must be an object', id)
        chat.params = validate_params(params, id, limits)
    if dialect == "openai":
        # OpenAI-shaped frames carry sampling parameters at the top level.
        top = {k: v for k, v in obj.items() if k in _PARAMS}
        if top:
            chat.params = {**validate_params(top, id, limits), **chat.params}
    return chat


def validate_messages(messages: Any, limits: Limits, id: str | None = None) -> list[dict[str, Any]]:
    """Check an OpenAI-style ``messages`` list; return it unchanged if valid."""
    if type(messages) is not list:
        raise _bad('"messages" must be a list', id)
    if not messages:
        raise _bad('"messages" is empty', id)
    if len(messages) > limits.max_messages:
        raise _bad(f'"messages" has {len(messages)} items; the limit is {limits.max_messages}', id)
    for i, m in enumerate(messages):
        if type(m) is not dict:
            raise _bad(f"messages[{i}] must be an object", id)
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}", id)
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"messages[{i}].content must be a string or a list of parts", id)
        if content is None and role != "assistant":
            raise _bad(f"messages[{i}].content is missing", id)
        if type(content) is list:
            for j, part in enumerate(content):
                if type(part) is not dict or not isinstance(part.get("type"), str):
                    raise _bad(f'messages[{i}].content[{j}] must be an object with a "type"', id)
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise _bad(f"messages[{i}].content[{j}].text must be a string", id)
                if part["type"] == "image_url":
                    image = part.get("image_url")
                    if type(image) is not dict or not isinstance(image.get("url"), str):
                        raise _bad(f'messages[{i}].content[{j}].image_url must be an object with a "url" string', id)
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise _bad(f"messages[{i}].{key} must be a string", id)
        calls = m.get("tool_calls")
        if calls is not None:
            _check_tool_calls(calls, f"messages[{i}].tool_calls", id)
    return messages


def _check_tool_calls(calls: Any, where: str, id: str | None) -> None:
    """An assistant turn's ``tool_calls``, as the providers' request builders read them (they convert
    each to the provider's own shape and must not meet a string where an object goes)."""
    if type(calls) is not list:
        raise _bad(f"{where} must be a list", id)
    if len(calls) > MAX_TOOLS:
        raise _bad(f"{where} has {len(calls)} items; the limit is {MAX_TOOLS}", id)
    for k, call in enumerate(calls):
        if type(call) is not dict:
            raise _bad(f"{where}[{k}] must be an object", id)
        for key in ("id", "type"):
            if call.get(key) is not None and not isinstance(call[key], str):
                raise _bad(f"{where}[{k}].{key} must be a string", id)
        fn = call.get("function")
        if type(fn) is not dict or not isinstance(fn.get("name"), str):
            raise _bad(f'{where}[{k}].function must be an object with a "name" string', id)
        if fn.get("arguments") is not None and not isinstance(fn["arguments"], str):
            raise _bad(f"{where}[{k}].function.arguments must be a string (JSON text)", id)


def validate_params(
    params: dict[str, Any], id: str | None = None, limits: Limits | None = None, fields: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check sampling parameters' names, types and sizes; return the ones to send upstream.

    ``fields``: the request's other field names, suggested too when an unknown name is close to one.
    """
    max_output = (limits or _DEFAULT_LIMITS).max_output_tokens
    out: dict[str, Any] = {}
    for key, value in params.items():
        types = _PARAMS.get(key)
        if types is None:
            hint = did_you_mean(str(key)[:40], [*fields, *_PARAMS])
            raise _bad(f'unknown parameter "{key[:40]}"{hint} (allowed: {", ".join(sorted(_PARAMS))})', id)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types:
            raise _bad(f'"{key}" has the wrong type', id)
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise _bad(f'"{key}" must be {names}', id)
        if key in ("max_tokens", "max_completion_tokens"):
            if value < 1:
                raise _bad(f'"{key}" must be at least 1', id)
            if value > max_output:
                raise _bad(f'"{key}" is {value}; this gateway allows at most {max_output} (max_output_tokens)', id)
        if (
            key == "stop"
            and type(value) is list
            and (len(value) > MAX_STOP or not all(isinstance(v, str) and len(v) <= MAX_STOP_CHARS for v in value))
        ):
            raise _bad(f'"stop" must be a string or a list of at most {MAX_STOP} strings', id)
        if key == "stop" and type(value) is str and len(value) > MAX_STOP_CHARS:
            raise _bad(f'"stop" is longer than {MAX_STOP_CHARS} characters', id)
        if key == "tools":
            _check_tools(value, id)
        if key == "temperature" and not 0 <= value <= 2:
            raise _bad('"temperature" must be between 0 and 2', id)
        if key == "top_p" and not 0 <= value <= 1:
            raise _bad('"top_p" must be between 0 and 1', id)
        if key in ("presence_penalty", "frequency_penalty") and not -2 <= value <= 2:
            raise _bad(f'"{key}" must be between -2 and 2', id)
        if key == "tool_choice":
            _check_tool_choice(value, id)
        out[key] = value
    return out


_DEFAULT_LIMITS = Limits()


def _check_tool_choice(choice: str | dict[str, Any], id: str | None) -> None:
    """``"auto"``, ``"none"``, ``"required"``, or an object with a ``type`` (a function's with its name)."""
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise _bad('"tool_choice" must be "auto", "none", "required" or an object', id)
        return
    if not isinstance(choice.get("type"), str):
        raise _bad('"tool_choice" must be an object with a "type"', id)
    if choice["type"] == "function" and not _named(choice.get("function")):
        raise _bad('"tool_choice".function.name must be a non-empty string', id)


def _named(fn: Any) -> bool:
    """A ``function`` object with a non-empty ``name`` (in a tool, or a tool choice)."""
    return type(fn) is dict and isinstance(fn.get("name"), str) and bool(fn["name"])


def _check_tools(tools: list[Any], id: str | None) -> None:
    if len(tools) > MAX_TOOLS:
        raise _bad(f'"tools" has {len(tools)} items; the limit is {MAX_TOOLS}', id)
    for i, tool in enumerate(tools):
        if type(tool) is not dict or not isinstance(tool.get("type"), str):
            raise _bad(f'tools[{i}] must be an object like {{"type": "function", "function": {{"name": …}}}}', id)
        if tool["type"] == "function" and not _named(tool.get("function")):
            raise _bad(f"tools[{i}].function.name must be a non-empty string", id)
