"""OpenAI Responses API: ``response.*`` event streams and ``response`` objects.

What the ``openai`` SDK's ``client.responses.create(...)`` / ``client.responses.stream(...)``
send and accept (checked against openai-python 3.57.0's ``types/responses`` and
``lib/streaming/responses``). This module decodes a request body into a chat (input
items -> OpenAI-style messages, flat function tools -> nested ones), and encodes a run's
events as the Responses stream, no I/O.

Sequence numbers are a pure function of the run's log: an encoder built from the same
response "echo" (the request fields the Response object repeats) and fed the same events
from ``start`` numbers every event the same way, on any instance, so a replay after
``starting_after=N`` is the live stream minus its first N+1 events. Item ids are derived
from the response id and the output index for the same reason.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from ..protocol.frames import Chat, Limits, validate_messages, validate_params
from ..protocol.stream import decode_event

__all__ = [
    "ResponsesEncoder",
    "ResponsesRequest",
    "decode_rest",
    "error_body",
    "new_response_id",
    "parse_request",
    "response_usage",
]

_dumps = orjson.dumps

#: request fields accepted and ignored (they change nothing here)
_IGNORED = frozenset(
    {
        "include",
        "stream_options",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "top_logprobs",
        "max_tool_calls",
        "truncation",
        "user",
    }
)
#: request fields read by :func:`parse_request`
_KNOWN = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning",
        "previous_response_id",
        "store",
        "background",
        "stream",
        "metadata",
        "text",
    }
)
_INPUT_ROLES = frozenset({"user", "system", "developer", "assistant"})
_RESPONSE_ID_LEN = 5 + 8 + 24


def _bad(message: str, param: str | None) -> GatewayError:
    return GatewayError("bad_request", message, extra={"param": param} if param else None)


def error_body(err: GatewayError) -> dict[str, Any]:
    """OpenAI's error object, with ``param`` naming the offending field when known."""
    body = err.to_openai()
    param = err.extra.get("param")
    if param is not None:
        body["error"]["param"] = param
    return body


def new_response_id(now: float | None = None) -> str:
    """``resp_`` + the creation time (8 hex digits) + 24 random hex digits.

    The time is part of the id so that every instance derives the same ``created_at``
    from it when it replays the stream. The id is also the run's ``stream_id``.
    """
    return f"resp_{int(time.time() if now is None else now):08x}{uuid.uuid4().hex[:24]}"


def created_at(response_id: str) -> int:
    try:
        return int(response_id[5:13], 16)
    except ValueError:
        return 0


def is_response_id(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == _RESPONSE_ID_LEN
        and value.startswith("resp_")
        and all(c in "0123456789abcdef" for c in value[5:])
    )


# -- requests ------------------------------------------------------------------


@dataclass(slots=True)
class ResponsesRequest:
    """A decoded ``POST /v1/responses`` body."""

    chat: Chat  #: messages = the new input only (instructions and history are prepended by the caller)
    input_messages: list[dict[str, Any]]
    instructions: str | None
    echo: dict[str, Any]  #: the request fields the Response object repeats
    stream: bool = False
    background: bool = False
    store: bool = True
    previous_response_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _text_parts(content: list[Any], where: str, role: str) -> list[dict[str, Any]] | str:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        if type(part) is not dict:
            raise _bad(f"{p} must be an object", p)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{p}.text must be a string", f"{p}.text")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise _bad(f"{p}.image_url must be a string (file_id images are not supported)", f"{p}.image_url")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            raise _bad(f'{p}.type "{str(kind)[:40]}" is not supported (input_text, output_text, input_image)', p)
    if role == "assistant" or all(p["type"] == "text" for p in parts):
        return "".join(p.get("text", "") for p in parts)
    return parts


def input_messages(value: Any) -> list[dict[str, Any]]:
    """The ``input`` field (a string or a list of input items) as OpenAI Chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if type(value) is not list:
        raise _bad('"input" must be a string or a list of input items', "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if type(item) is not dict:
            raise _bad(f"{where} must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _INPUT_ROLES:
                raise _bad(f"{where}.role must be one of {', '.join(sorted(_INPUT_ROLES))}", f"{where}.role")
            content = item.get("content")
            if isinstance(content, list):
                content = _text_parts(content, f"{where}.content", role)
            elif not isinstance(content, str):
                raise _bad(f"{where}.content must be a string or a list of content parts", f"{where}.content")
            out.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
            for key, v in (("call_id", call_id), ("name", name), ("arguments", arguments)):
                if not isinstance(v, str):
                    raise _bad(f"{where}.{key} must be a string", f"{where}.{key}")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise _bad(f"{where}.call_id must be a string", f"{where}.call_id")
            if isinstance(output, list):
                output = _text_parts(output, f"{where}.output", "assistant")
            if not isinstance(output, str):
                raise _bad(f"{where}.output must be a string", f"{where}.output")
            out.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # the model's own earlier reasoning: not sent back upstream
        else:
            raise _bad(
                f'{where}.type "{str(kind)[:40]}" is not supported (message, function_call, function_call_output)',
                f"{where}.type",
            )
    if not out:
        raise _bad('"input" has no messages', "input")
    return out


def _tools(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Responses' flat function tools -> (echo, Chat Completions' nested tools)."""
    if type(value) is not list:
        raise _bad('"tools" must be a list', "tools")
    echo, nested = [], []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if type(tool) is not dict:
            raise _bad(f"{where} must be an object", where)
        if tool.get("type") != "function":
            raise _bad(f'{where}.type "{str(tool.get("type"))[:40]}" is not supported (only "function")', where)
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
        fn: dict[str, Any] = {"name": name}
        params = tool.get("parameters")
        if params is not None:
            if type(params) is not dict:
                raise _bad(f"{where}.parameters must be a JSON schema object", f"{where}.parameters")
            fn["parameters"] = params
        desc = tool.get("description")
        if desc is not None:
            if not isinstance(desc, str):
                raise _bad(f"{where}.description must be a string", f"{where}.description")
            fn["description"] = desc
        strict = tool.get("strict")
        if strict is not None:
            fn["strict"] = bool(strict)
        nested.append({"type": "function", "function": fn})
        echo.append(
            {
                "type": "function",
                "name": name,
                "description": desc,
                "parameters": params,
                "strict": strict if strict is not None else None,
            }
        )
    return echo, nested


def _tool_choice(value: Any) -> Any:
    if value in ("auto", "none", "required"):
        return value
    if type(value) is dict and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    raise _bad('"tool_choice" must be "auto", "none", "required" or {"type": "function", "name": ...}', "tool_choice")


def _text_format(value: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``text`` -> (echo, response_format or None)."""
    if type(value) is not dict:
        raise _bad('"text" must be an object', "text")
    fmt = value.get("format") or {"type": "text"}
    if type(fmt) is not dict:
        raise _bad('"text.format" must be an object', "text.format")
    kind = fmt.get("type")
    echo = {"format": fmt}
    if "verbosity" in value:
        echo["verbosity"] = value["verbosity"]
    if kind == "text":
        return echo, None
    if kind == "json_object":
        return echo, {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return echo, {"type": "json_schema", "json_schema": schema}
    raise _bad('"text.format.type" must be "text", "json_object" or "json_schema"', "text.format.type")


def parse_request(body: dict[str, Any], limits: Limits) -> ResponsesRequest:
    """A ``POST /v1/responses`` body, validated; every refusal names its field."""
    for key in body:
        if key not in _KNOWN and key not in _IGNORED:
            raise _bad(f'unsupported parameter "{key[:60]}"', key)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 200):
        raise _bad('"model" must be a non-empty string', "model")
    if "input" not in body:
        raise _bad('"input" is required', "input")
    new = input_messages(body["input"])
    validate_messages(new, limits)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad('"instructions" must be a string', "instructions")
    params: dict[str, Any] = {}
    echo: dict[str, Any] = {
        "instructions": instructions,
        "max_output_tokens": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": None,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
    }
    mot = body.get("max_output_tokens")
    if mot is not None:
        if type(mot) is not int or mot < 1:
            raise _bad('"max_output_tokens" must be an integer of at least 1', "max_output_tokens")
        params["max_tokens"] = echo["max_output_tokens"] = mot
    for key in ("temperature", "top_p"):
        v = body.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _bad(f'"{key}" must be a number', key)
            if key == "temperature" and not 0 <= v <= 2:
                raise _bad('"temperature" must be between 0 and 2', key)
            if key == "top_p" and not 0 <= v <= 1:
                raise _bad('"top_p" must be between 0 and 1', key)
            params[key] = echo[key] = v
    if body.get("tools") is not None:
        echo["tools"], nested = _tools(body["tools"])
        if nested:
            params["tools"] = nested
    if body.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(body["tool_choice"])
        echo["tool_choice"] = body["tool_choice"]
    ptc = body.get("parallel_tool_calls")
    if ptc is not None:
        if not isinstance(ptc, bool):
            raise _bad('"parallel_tool_calls" must be true or false', "parallel_tool_calls")
        echo["parallel_tool_calls"] = ptc
        if "tools" in params:
            params["parallel_tool_calls"] = ptc
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if type(reasoning) is not dict:
            raise _bad('"reasoning" must be an object', "reasoning")
        for key in reasoning:
            if key not in ("effort", "summary", "generate_summary"):
                raise _bad(f'unsupported parameter "reasoning.{key[:40]}"', f"reasoning.{key[:40]}")
        effort = reasoning.get("effort")
        if effort is not None:
            if effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
                raise _bad('"reasoning.effort" must be none, minimal, low, medium, high or xhigh', "reasoning.effort")
            params["reasoning_effort"] = effort
        echo["reasoning"] = {"effort": effort, "summary": reasoning.get("summary")}
    if body.get("text") is not None:
        echo["text"], response_format = _text_format(body["text"])
        if response_format is not None:
            params["response_format"] = response_format
    metadata = body.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict or len(metadata) > 16:
            raise _bad('"metadata" must be an object of at most 16 string values', "metadata")
        for k, v in metadata.items():
            if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
                raise _bad(f'"metadata.{k[:40]}" must be a string of at most 512 characters', f"metadata.{k[:40]}")
        echo["metadata"] = metadata
    flags: dict[str, bool] = {}
    for key, default in (("stream", False), ("background", False), ("store", True)):
        v = body.get(key)
        if v is None:
            v = default
        if not isinstance(v, bool):
            raise _bad(f'"{key}" must be true or false', key)
        flags[key] = v
    if flags["background"] and not flags["store"]:
        raise _bad('"background" needs "store": true (a background response is kept to be read later)', "background")
    prev = body.get("previous_response_id")
    if prev is not None:
        if not is_response_id(prev):
            raise _bad('"previous_response_id" is not a response id ("resp_...")', "previous_response_id")
        echo["previous_response_id"] = prev
    trunc = body.get("truncation")
    if trunc is not None:
        if trunc not in ("auto", "disabled"):
            raise _bad('"truncation" must be "auto" or "disabled"', "truncation")
        echo["truncation"] = trunc
    try:
        params = validate_params(params)
    except GatewayError as err:
        raise _bad(err.message, None) from None
    chat = Chat(id="http", model=model, messages=new, params=params, dialect="openai")
    return ResponsesRequest(
        chat=chat,
        input_messages=new,
        instructions=instructions,
        echo=echo,
        stream=flags["stream"],
        background=flags["background"],
        store=flags["store"],
        previous_response_id=prev,
    )


# -- responses ------------------------------------------------------------------


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """tokenwire's usage (OpenAI Chat's names) in the Responses API's shape."""
    if not usage:
        return None
    inp = usage.get("prompt_tokens") or 0
    out = usage.get("completion_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    cdetails = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": inp,
        "input_tokens_details": {
            "cached_tokens": details.get("cached_tokens") or usage.get("cached_tokens") or 0,
            "cache_write_tokens": usage.get("cache_write_tokens") or 0,
        },
        "output_tokens": out,
        "output_tokens_details": {
            "reasoning_tokens": cdetails.get("reasoning_tokens") or usage.get("reasoning_tokens") or 0
        },
        "total_tokens": usage.get("total_tokens") or inp + out,
    }


def _status_of(end: dict[str, Any]) -> str:
    reason = end.get("finish_reason")
    status = end.get("status")
    if reason == "error" or status == "failed":
        return "failed"
    if reason == "cancelled" or status == "cancelled":
        return "cancelled"
    if reason == "length":
        return "incomplete"
    return "completed"


def _error_fields(err: Any) -> dict[str, Any]:
    """A GatewayError, or its logged event (a dict), as Responses' error object."""
    if isinstance(err, GatewayError):
        err = err.to_event(None)  # the message as a client may see it (secrets masked), as logged
    code, message = str(err.get("code") or "internal_error"), str(err.get("message") or "")
    kind = "rate_limit_exceeded" if code in ("rate_limited", "upstream_rate_limited") else "server_error"
    return {"code": kind, "message": message, "type": code}


#: a logged v1 event back into ``(kind, value)`` (replays, another instance's runs)
decode_rest = decode_event


_MESSAGE, _REASONING, _FUNCTION = 1, 2, 3


class ResponsesEncoder:
    """A run's events as the Responses stream (``event: …`` / ``data: {…}`` SSE frames).

    Also what a non-streamed or background response is built with (``sse=False``: the
    same state, no bytes), so every path gives the same Response object. Events with a
    ``sequence_number`` up to ``starting_after`` are counted but not sent (a resume).
    ``response.created`` and ``response.in_progress`` go out with the first answer event
    (or the end), not at ``start``: a provider refusing up front can still be answered
    with an HTTP status.
    """

    __slots__ = (
        "_pre",
        "_tail",
        "cur",
        "cur_parts",
        "echo",
        "error",
        "final",
        "head_sent",
        "id",
        "items",
        "seq",
        "skip",
        "sse",
        "tool_index",
        "ws",
    )

    def __init__(
        self,
        response_id: str,
        echo: dict[str, Any],
        *,
        starting_after: int = -1,
        sse: bool = True,
        ws: bool = False,
    ) -> None:
        self.id = response_id
        self.echo = dict(echo)
        self.seq = 0  #: the next event's sequence_number
        self.skip = starting_after
        self.sse = sse
        self.items: list[dict[str, Any]] = []  #: output items, the open one last
        self.cur = 0  #: the kind of the open item (0: none)
        self.cur_parts: list[str] = []  #: the open item's text / arguments so far
        self.tool_index: int | None = None  #: the run's index of the open function call
        self._pre = b""  #: the open item's delta event, up to its sequence_number
        #: WebSocket mode: one JSON object per line (one frame each), no ``event:`` lines
        self.ws = ws
        self._tail = b'%d,"delta":%b}\n' if ws else b'%d,"delta":%b}\n\n'
        self.head_sent = False
        self.error: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None  #: the Response object once ended

    # -- the Response object ---------------------------------------------------
    def response(self, status: str, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": created_at(self.id),
            "status": status,
            "background": self.echo.get("background", False),
            "error": None,
            "incomplete_details": None,
            "output": self.items if output is None else output,
            "usage": None,
            "store": self.echo.get("store", True),
        }
        for key, value in self.echo.items():
            obj.setdefault(key, value)
        return obj

    def snapshot(self) -> dict[str, Any]:
        """The response so far (a GET while it runs)."""
        if self.final is not None:
            return self.final
        items = [dict(i) for i in self.items]
        if self.cur and items:
            self._fill(items[-1], "".join(self.cur_parts), "in_progress")
        return self.response("queued" if not self.head_sent and self.echo.get("background") else "in_progress", items)

    def finish(self, end: dict[str, Any], error: Any = None) -> dict[str, Any]:
        """The final Response object for these end fields (also what is stored, before ``end`` is sent)."""
        status = _status_of(end)
        items = [dict(i) for i in self.items]
        if self.cur and items:
            self._fill(items[-1], "".join(self.cur_parts), "completed" if status == "completed" else "incomplete")
        obj = self.response(status, items)
        model = end.get("model")
        if model:
            obj["model"] = model
        obj["usage"] = response_usage(end.get("usage"))
        if status == "completed":
            total = (end.get("timing") or {}).get("total_ms") or 0
            obj["completed_at"] = created_at(self.id) + int(total // 1000)
        elif status == "incomplete":
            obj["incomplete_details"] = {"reason": "max_output_tokens"}
        elif status == "failed":
            err = error if error is not None else self.error
            if err is None and end.get("error"):
                err = end["error"]
            obj["error"] = _error_fields(err) if err is not None else {"code": "server_error", "message": "failed"}
        return obj

    # -- events ------------------------------------------------------------------
    def _event(self, kind: bytes, body: bytes) -> bytes:
        seq = self.seq
        self.seq = seq + 1
        if seq <= self.skip or not self.sse:
            return b""
        if self.ws:
            return b'{"type":"%b","sequence_number":%d,%b}\n' % (kind, seq, body)
        return b'event: %b\ndata: {"type":"%b","sequence_number":%d,%b}\n\n' % (kind, kind, seq, body)

    def _head(self) -> bytes:
        if self.head_sent:
            return b""
        self.head_sent = True
        created = self.response("queued" if self.echo.get("background") else "in_progress")
        out = self._event(b"response.created", b'"response":' + _dumps(created))
        return out + self._event(b"response.in_progress", b'"response":' + _dumps(self.response("in_progress")))

    @staticmethod
    def _fill(item: dict[str, Any], text: str, status: str) -> None:
        kind = item["type"]
        if kind == "message":
            item["content"] = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        elif kind == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": text}]
        else:
            item["arguments"] = text
        item["status"] = status

    def _close(self, status: str = "completed") -> bytes:
        """Close the open output item: its ``*.done`` events."""
        kind = self.cur
        if not kind:
            return b""
        index = len(self.items) - 1
        item = self.items[index]
        text = "".join(self.cur_parts)
        self._fill(item, text, status)
        self.cur = 0
        self.cur_parts = []
        self.tool_index = None
        where = b'"item_id":%b,"output_index":%d' % (_dumps(item["id"]), index)
        out = b""
        if kind == _MESSAGE:
            part = item["content"][0]
            out += self._event(
                b"response.output_text.done", where + b',"content_index":0,"text":%b,"logprobs":[]' % _dumps(text)
            )
            out += self._event(b"response.content_part.done", where + b',"content_index":0,"part":' + _dumps(part))
        elif kind == _REASONING:
            out += self._event(b"response.reasoning_text.done", where + b',"content_index":0,"text":%b' % _dumps(text))
            out += self._event(
                b"response.content_part.done", where + b',"content_index":0,"part":' + _dumps(item["content"][0])
            )
        else:
            out += self._event(b"response.function_call_arguments.done", where + b',"arguments":%b' % _dumps(text))
        return out + self._event(b"response.output_item.done", b'"output_index":%d,"item":%b' % (index, _dumps(item)))

    def _open(self, kind: int, delta: dict[str, Any] | None = None) -> bytes:
        out = self._head() + self._close()
        index = len(self.items)
        suffix = f"{self.id[5:]}_{index}"
        item: dict[str, Any]
        if kind == _MESSAGE:
            item = {"id": "msg_" + suffix, "type": "message", "role": "assistant", "status": "in_progress"}
            item["content"] = []
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            delta_kind, extra = b"response.output_text.delta", b',"content_index":0,"logprobs":[]'
        elif kind == _REASONING:
            item = {"id": "rs_" + suffix, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
            delta_kind, extra = b"response.reasoning_text.delta", b',"content_index":0'
        else:
            assert delta is not None
            item = {
                "id": "fc_" + suffix,
                "type": "function_call",
                "call_id": delta.get("id") or "call_" + suffix,
                "name": delta.get("name") or "",
                "arguments": "",
                "status": "in_progress",
            }
            self.tool_index = delta.get("index", 0)
            part = None
            delta_kind, extra = b"response.function_call_arguments.delta", b""
        self.items.append(item)
        self.cur = kind
        out += self._event(b"response.output_item.added", b'"output_index":%d,"item":%b' % (index, _dumps(item)))
        where = b'"item_id":%b,"output_index":%d' % (_dumps(item["id"]), index)
        if part is not None:
            out += self._event(b"response.content_part.added", where + b',"content_index":0,"part":' + _dumps(part))
        self._pre = b'{"type":"%b",%b%b,"sequence_number":' % (delta_kind, where, extra)
        if not self.ws:
            self._pre = b"event: %b\ndata: " % delta_kind + self._pre
        return out

    def _delta(self, text: str) -> bytes:
        self.cur_parts.append(text)
        seq = self.seq
        self.seq = seq + 1
        if seq <= self.skip or not self.sse:
            return b""
        return self._pre + self._tail % (seq, _dumps(text))

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        if kind == TOKEN:  # the hot path
            if self.cur == _MESSAGE:
                return self._delta(value) or None
            return (self._open(_MESSAGE) + self._delta(value)) or None
        if kind == REASONING:
            if self.cur == _REASONING:
                return self._delta(value) or None
            return (self._open(_REASONING) + self._delta(value)) or None
        if kind == TOOL_CALL:
            out = b""
            if self.cur != _FUNCTION or self.tool_index != value.get("index", 0):
                out = self._open(_FUNCTION, value)
            elif value.get("name"):
                self.items[-1]["name"] += value["name"]
            args = value.get("arguments")
            if args:
                out += self._delta(args)
            return out or None
        if kind == START:
            model = value.get("model")
            if model:
                self.echo["model"] = model
            return None
        if kind == ERROR:
            if isinstance(value, GatewayError):
                value = value.to_event(None)
            self.error = value
            out = self._head()
            code, message = value.get("code"), value.get("message") or ""
            out += self._event(b"error", b'"code":%b,"message":%b,"param":null' % (_dumps(code), _dumps(message)))
            return out or None
        if kind == END:
            status = _status_of(value)
            out = self._head() + self._close("completed" if status == "completed" else "incomplete")
            self.final = final = self.finish(value)
            name = {
                "completed": b"response.completed",
                "failed": b"response.failed",
            }.get(status, b"response.incomplete")
            out += self._event(name, b'"response":' + _dumps(final))
            return out or None
        return None
