"""The Vercel AI SDK's UI message stream (``ai`` 7.x, ``DefaultChatTransport`` / ``useChat``).

Requests: the body ``DefaultChatTransport`` POSTs (``id`` = the chat id, ``messages`` =
UIMessages with ``parts``, ``trigger``, ``messageId``, plus the app's own ``body`` fields,
of which ``model``, ``system`` and the sampling parameters are read). :func:`parse_request`
turns it into a :class:`~tokenwire.protocol.frames.Chat` with OpenAI-style messages.

Replies: a run's events become UI message chunks (``ui-message-chunks.ts`` in the SDK):
``start`` (messageId), ``start-step``, ``text-start``/``text-delta``/``text-end``,
``reasoning-start``/``-delta``/``-end``, ``tool-input-start``/``tool-input-delta``/
``tool-input-available``, ``finish-step``, ``finish`` (finishReason, messageMetadata with
usage and cost), ``error`` (errorText) on failure, ``abort`` on cancel. :class:`UIChunks`
is the state machine (deterministic: the same events give the same chunks and part ids, so
a replay for ``resume`` rebuilds the same message); :class:`SSEEncoder` frames its chunks as
the SDK's SSE (``data: {…}`` … ``data: [DONE]``). The WebSocket framing is in
:mod:`.aisdk_ws`. No I/O here.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..protocol.errors import GatewayError
from ..protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from ..protocol.frames import Chat, Limits, validate_messages, validate_params

__all__ = [
    "HEADERS",
    "TRIGGERS",
    "AISDKRequest",
    "SSEEncoder",
    "UIChunks",
    "error_body",
    "error_text",
    "from_v1",
    "parse_request",
    "to_openai_messages",
]

_dumps = orjson.dumps

#: what the SDK's ``createUIMessageStreamResponse`` sends besides the SSE content type
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
TRIGGERS = ("submit-message", "regenerate-message")
DONE = b"data: [DONE]\n\n"

#: the app's body fields read as sampling parameters (AI SDK camelCase, then OpenAI's names)
_PARAM_ALIASES = {
    "temperature": "temperature",
    "topP": "top_p",
    "top_p": "top_p",
    "maxOutputTokens": "max_tokens",
    "maxTokens": "max_tokens",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_completion_tokens",
    "presencePenalty": "presence_penalty",
    "presence_penalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stopSequences": "stop",
    "stop": "stop",
    "reasoningEffort": "reasoning_effort",
    "reasoning_effort": "reasoning_effort",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "toolChoice": "tool_choice",
    "response_format": "response_format",
    "user": "user",
}
_ROLES = ("system", "user", "assistant")
#: parts that carry nothing for the model (UI bookkeeping, sources, app data)
_SKIPPED_PARTS = ("step-start", "source-url", "source-document", "custom")
_TOOL_START = b'{"type":"tool-input-start","toolCallId":%b,"toolName":%b}'
_TOOL_DELTA = b'{"type":"tool-input-delta","toolCallId":%b,"inputTextDelta":%b}'
_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}


class AISDKRequest:
    """What a request says besides the chat: the chat id, trigger and the reply's message id."""

    __slots__ = ("chat_id", "message_id", "trigger")

    def __init__(self, chat_id: str, trigger: str, message_id: str | None) -> None:
        self.chat_id = chat_id
        self.trigger = trigger
        self.message_id = message_id


#: the ``end`` fields a finish chunk carries as messageMetadata (``stored``: false when the turn was not saved)
_END_META = ("model", "provider", "usage", "cost_usd", "timing", "stored", "store_error")


def _bad(message: str) -> GatewayError:
    return GatewayError("bad_request", message)


def _check_chat_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128 or any(c in value for c in "/?#\\ \t\r\n"):
        raise _bad('"id" (the chat id) must be a string of 1-128 characters without "/", "?", "#" or spaces')
    return value


def parse_request(body: dict[str, Any], limits: Limits) -> tuple[Chat, AISDKRequest]:
    """A ``DefaultChatTransport`` body (or a WebSocket ``send`` frame's fields) as a chat."""
    chat_id = _check_chat_id(body.get("id"))
    trigger = body.get("trigger", "submit-message")
    if trigger not in TRIGGERS:
        raise _bad('"trigger" must be "submit-message" or "regenerate-message"')
    message_id = body.get("messageId")
    if message_id is not None and not isinstance(message_id, str):
        raise _bad('"messageId" must be a string')
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 200):
        raise _bad('"model" must be a non-empty string')
    if "messages" not in body:
        raise _bad('"messages" is required (the chat\'s UIMessages)')
    ui = body["messages"]
    messages = to_openai_messages(ui)
    system = body.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _bad('"system" must be a string')
        if not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
    params: dict[str, Any] = {}
    for key, name in _PARAM_ALIASES.items():
        if key in body and body[key] is not None:
            params[name] = body[key]
    try:
        params = validate_params(params)
    except GatewayError as err:
        raise _bad(err.message + " (in the request body)") from None
    chat = Chat(
        id=chat_id,
        model=model,
        messages=validate_messages(messages, limits),
        params=params,
    )
    # the reply continues the last message if it is the assistant's (tool results sent back)
    last = ui[-1]
    reply_id = last.get("id") if last.get("role") == "assistant" and trigger == "submit-message" else None
    return chat, AISDKRequest(chat_id, trigger, reply_id if isinstance(reply_id, str) else None)


def _text(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise _bad(f'{where}.text must be a string (a "{part.get("type")}" part)')
    return text


def to_openai_messages(ui: Any) -> list[dict[str, Any]]:
    """UIMessages (``{id, role, parts: [...]}``) as OpenAI chat messages.

    Text parts become the content; an assistant's tool parts (``tool-<name>`` and
    ``dynamic-tool``) become ``tool_calls`` plus a ``tool`` message per result, split into
    one assistant message per step as the SDK's ``convertToModelMessages`` does. Reasoning,
    step markers, sources and ``data-*`` parts are not sent to the model; ``file`` parts are
    refused (400), this gateway has no multimodal input.
    """
    if type(ui) is not list:
        raise _bad('"messages" must be a list of UIMessages')
    if not ui:
        raise _bad('"messages" is empty')
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(ui):
        where = f"messages[{i}]"
        if type(msg) is not dict:
            raise _bad(f"{where} must be an object")
        role = msg.get("role")
        if role not in _ROLES:
            raise _bad(f'{where}.role must be "system", "user" or "assistant"')
        parts = msg.get("parts")
        if type(parts) is not list:
            raise _bad(f"{where}.parts must be a list (AI SDK 5+ UIMessages)")
        if role == "assistant":
            _assistant(parts, where, out)
            continue
        texts = []
        for j, part in enumerate(parts):
            ptype = _part_type(part, f"{where}.parts[{j}]")
            if ptype == "text":
                texts.append(_text(part, f"{where}.parts[{j}]"))
            elif ptype == "file":
                raise _bad(f'{where}.parts[{j}] is a "file" part: file and image input is not supported by tokenwire')
            elif ptype in _SKIPPED_PARTS or ptype.startswith("data-") or ptype == "reasoning":
                continue
            else:
                raise _bad(f'{where}.parts[{j}]: a "{ptype[:40]}" part is not supported in a {role} message')
        out.append({"role": role, "content": "".join(texts)})
    return out


def _part_type(part: Any, where: str) -> str:
    if type(part) is not dict or not isinstance(part.get("type"), str):
        raise _bad(f'{where} must be an object with a "type"')
    return part["type"]


def _assistant(parts: list[Any], where: str, out: list[dict[str, Any]]) -> None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def flush() -> None:
        if texts or calls:
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
            if calls:
                msg["tool_calls"] = list(calls)
            elif msg["content"] is None:
                msg["content"] = ""
            out.append(msg)
            out.extend(results)
        texts.clear()
        calls.clear()
        results.clear()

    for j, part in enumerate(parts):
        at = f"{where}.parts[{j}]"
        ptype = _part_type(part, at)
        if ptype == "text":
            if calls:  # text after tool calls: the next step
                flush()
            texts.append(_text(part, at))
        elif ptype.startswith("tool-") or ptype == "dynamic-tool":
            name = part.get("toolName") if ptype == "dynamic-tool" else ptype[5:]
            call_id = part.get("toolCallId")
            if not isinstance(name, str) or not name or not isinstance(call_id, str):
                raise _bad(f"{at} needs a tool name and a string toolCallId")
            state = part.get("state")
            if state in ("input-streaming", "approval-requested"):
                continue  # not a finished call: nothing to tell the model yet
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": _dumps(part.get("input", {})).decode()},
                }
            )
            if state == "output-available":
                output = part.get("output")
                content = output if isinstance(output, str) else _dumps(output).decode()
                results.append({"role": "tool", "tool_call_id": call_id, "content": content})
            elif state == "output-error":
                results.append({"role": "tool", "tool_call_id": call_id, "content": str(part.get("errorText") or "")})
            elif state == "output-denied":
                results.append({"role": "tool", "tool_call_id": call_id, "content": "the user denied this call"})
        elif ptype == "file":
            raise _bad(f'{at} is a "file" part: file and image input is not supported by tokenwire')
        elif ptype == "step-start":
            flush()
        elif ptype in _SKIPPED_PARTS or ptype.startswith("data-") or ptype in ("reasoning", "reasoning-file"):
            continue
        else:
            raise _bad(f'{at}: a "{ptype[:40]}" part is not supported in an assistant message')
    flush()


def error_body(err: GatewayError) -> bytes:
    """An HTTP refusal's body, plain text: ``DefaultChatTransport`` makes the response text the
    error's message (``useChat``'s ``error.message``), so it is the sentence itself and its code."""
    return error_text(err).encode()


def from_v1(rest: bytes) -> tuple[int, Any]:
    """An event of the run's v1 log (``gen.after``, a Redis follower) as ``(kind, value)``."""
    obj = orjson.loads(b"{" + rest)
    t = obj.get("type")
    if t == "token":
        return TOKEN, obj["content"]
    if t == "reasoning":
        return REASONING, obj["content"]
    if t == "tool_call":
        return TOOL_CALL, obj["delta"]
    if t == "end":
        return END, obj
    if t == "error":
        return ERROR, GatewayError(obj.get("code", "internal_error"), obj.get("message", ""))
    return START, obj


def _finish_reason(reason: Any) -> str:
    return _FINISH.get(reason, "other") if reason else "stop"


class UIChunks:
    """The chunk state machine: a run's events in, UI message chunks (JSON bytes) out.

    ``delta_head`` is the bytes of a text-delta chunk up to its ``delta`` value while a text
    part is open: the framings use it for the per-token hot path (one ``dumps`` and a
    concatenation, no list).
    """

    __slots__ = ("closed", "delta_head", "message_id", "n_parts", "open", "started", "tools")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.started = False
        self.closed = False
        #: the open text or reasoning part: (type, id), or None
        self.open: tuple[str, bytes] | None = None
        self.delta_head: bytes | None = None
        self.n_parts = 0
        #: tool calls by index: [toolCallId, toolName, arguments text, started]
        self.tools: dict[int, list[Any]] = {}

    def _start(self, out: list[bytes]) -> None:
        self.started = True
        out.append(b'{"type":"start","messageId":' + _dumps(self.message_id) + b"}")
        out.append(b'{"type":"start-step"}')

    def _close_part(self, out: list[bytes]) -> None:
        if self.open is not None:
            kind, pid = self.open
            out.append(b'{"type":"' + kind.encode() + b'-end","id":' + pid + b"}")
            self.open = None
            self.delta_head = None

    def _open_part(self, kind: str, out: list[bytes]) -> bytes:
        self._close_part(out)
        pid = _dumps(f"{kind}-{self.n_parts}")
        self.n_parts += 1
        out.append(b'{"type":"' + kind.encode() + b'-start","id":' + pid + b"}")
        self.open = (kind, pid)
        head = b'{"type":"' + kind.encode() + b'-delta","id":' + pid + b',"delta":'
        if kind == "text":
            self.delta_head = head
        return head

    def chunks(self, kind: int, value: Any) -> list[bytes]:
        """The chunks one event becomes (in order; maybe none)."""
        out: list[bytes] = []
        if self.closed:
            return out
        if not self.started and kind != START:
            self._start(out)
        if kind == TOKEN or kind == REASONING:
            name = "text" if kind == TOKEN else "reasoning"
            open_ = self.open
            if open_ is not None and open_[0] == name:
                head = b'{"type":"' + name.encode() + b'-delta","id":' + open_[1] + b',"delta":'
            else:
                head = self._open_part(name, out)
            out.append(head + _dumps(value) + b"}")
        elif kind == TOOL_CALL:
            self._tool(value, out)
        elif kind == ERROR:
            self._close_part(out)
            out.append(b'{"type":"error","errorText":' + _dumps(error_text(value)) + b"}")
            self.closed = True
        elif kind == END:
            self._end(value, out)
        return out

    def _tool(self, delta: dict[str, Any], out: list[bytes]) -> None:
        index = delta.get("index", 0)
        call = self.tools.get(index)
        if call is None:
            call = self.tools[index] = [delta.get("id") or f"call_{index}", "", "", False]
        if delta.get("id") and not call[3]:
            call[0] = delta["id"]
        if delta.get("name"):
            call[1] += delta["name"]
        args = delta.get("arguments") or ""
        if not call[3]:
            if not call[1]:  # no name yet: keep the arguments until it comes
                call[2] += args
                return
            self._close_part(out)
            call[3] = True
            out.append(_TOOL_START % (_dumps(call[0]), _dumps(call[1])))
            args = call[2] + args
            call[2] = ""
        if args:
            call[2] += args
            out.append(_TOOL_DELTA % (_dumps(call[0]), _dumps(args)))

    def _end(self, end: dict[str, Any], out: list[bytes]) -> None:
        self._close_part(out)
        self.closed = True
        for index in sorted(self.tools):
            call_id, name, args, started = self.tools[index]
            if not started:
                name = name or "unknown"
                out.append(_TOOL_START % (_dumps(call_id), _dumps(name)))
            try:
                value = orjson.loads(args) if args.strip() else {}
            except orjson.JSONDecodeError:
                out.append(
                    b'{"type":"tool-input-error","toolCallId":%b,"toolName":%b,"input":%b,"errorText":%b}'
                    % (_dumps(call_id), _dumps(name), _dumps(args), _dumps("the arguments are not JSON"))
                )
                continue
            out.append(
                b'{"type":"tool-input-available","toolCallId":%b,"toolName":%b,"input":%b}'
                % (_dumps(call_id), _dumps(name), _dumps(value))
            )
        reason = end.get("finish_reason")
        if reason == "cancelled":
            out.append(b'{"type":"abort","reason":' + _dumps(end.get("reason") or "cancelled") + b"}")
            return
        if reason == "error":
            return  # the error chunk was the last word
        meta = {k: end[k] for k in _END_META if k in end}
        out.append(b'{"type":"finish-step"}')
        out.append(
            b'{"type":"finish","finishReason":%b,"messageMetadata":%b}' % (_dumps(_finish_reason(reason)), _dumps(meta))
        )


def error_text(err: Any) -> str:
    """An error as one sentence with its code (redacted like every client-bound message)."""
    if isinstance(err, GatewayError):
        return f"{err.to_event(None)['message']} ({err.code})"
    return str(err)


class SSEEncoder:
    """The UI message stream as the SDK's SSE: one ``data: {chunk}`` per chunk, then ``data: [DONE]``.

    ``start`` is held back until the first answer event, so that a provider refusing the
    request up front still gets the client an HTTP status (see ``server.streaming``).
    """

    __slots__ = ("done", "ui")

    def __init__(self, message_id: str) -> None:
        self.ui = UIChunks(message_id)
        self.done = False

    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        if value is None:  # from a log (a Redis follower hands over the v1 bytes only)
            kind, value = from_v1(rest)
        if kind == TOKEN:
            head = self.ui.delta_head
            if head is not None:  # the hot path: a token in an open text part
                return b"data: " + head + _dumps(value) + b"}\n\n"
        elif kind == START:
            return None
        chunks = self.ui.chunks(kind, value)
        data = b"".join([b"data: " + c + b"\n\n" for c in chunks])
        if kind == END or kind == ERROR:
            data += self.finish()
        return data or None

    def finish(self) -> bytes:
        """``data: [DONE]`` once (also for a stream that ended without ``end``, e.g. a lost follower)."""
        if self.done:
            return b""
        self.done = True
        return DONE
