"""Google Gemini ``models/{model}:streamGenerateContent?alt=sse``.

:class:`GeminiStreamParser` is pure (bytes in, events out); :class:`GeminiProvider`
converts the gateway's OpenAI-style request and is the thin I/O around it.
Gemini ends a stream with no terminator: the last chunk carries ``finishReason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec
import orjson

from ..protocol import events as ev
from ..protocol.errors import GatewayError
from ..protocol.events import Event
from .base import ChatCall, StreamParser
from .http import HTTPUpstream
from .openai import error_from_response, parse_openai_error
from .wire import H1Stream

__all__ = ["GeminiProvider", "GeminiStreamParser", "to_gemini_request"]

_PATH_SAFE = "@=:+,;!$&'()*-._~"  #: what a model id keeps unescaped in the URL path (RFC 3986 pchar)

#: Gemini finish reasons in OpenAI's vocabulary.
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
}

_loads = orjson.loads
_TOKEN = ev.TOKEN


class _Part(msgspec.Struct, gc=False):
    text: str | None = None
    thought: bool | None = None


class _Content(msgspec.Struct, gc=False):
    parts: list[_Part] | None = None


class _Candidate(msgspec.Struct, gc=False):
    content: _Content | None = None
    finishReason: str | None = None


class _UsageMetadata(msgspec.Struct, gc=False):
    """The counts ``_usage`` reads (every chunk carries them; only the last one's are used)."""

    promptTokenCount: int | msgspec.UnsetType | None = msgspec.UNSET
    candidatesTokenCount: int | msgspec.UnsetType | None = msgspec.UNSET
    totalTokenCount: int | msgspec.UnsetType | None = msgspec.UNSET
    thoughtsTokenCount: int | msgspec.UnsetType | None = msgspec.UNSET
    cachedContentTokenCount: int | msgspec.UnsetType | None = msgspec.UNSET


_USAGE_FIELDS = _UsageMetadata.__struct_fields__


class _Chunk(msgspec.Struct, gc=False):
    """A streamed chunk as the typed path reads it: text parts, the finish reason, usage, model.

    Decoded into untracked objects (``gc=False``, decoded data forms no cycle) rather than
    ``orjson.loads``'s dicts, as the OpenAI parser's chunks are. A chunk with anything else in it
    (an error, a function call, no candidates) takes the tolerant path.
    """

    candidates: list[_Candidate] | None = None
    usageMetadata: _UsageMetadata | None = None  #: not a dict: nothing built per token for it
    modelVersion: str | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class GeminiStreamParser(StreamParser):
    """Turns ``GenerateContentResponse`` chunks into provider-neutral events.

    Parts with ``thought: true`` are reasoning; ``functionCall`` parts arrive
    whole and become one tool-call delta each (id ``call_N``, arguments as a
    JSON string, as OpenAI clients expect). ``usageMetadata`` comes on every
    chunk; those with completion counts (or the last) become usage events and
    the relay keeps the last.
    """

    __slots__ = ("_calls", "_model_sent")

    def __init__(self, provider: str = "gemini") -> None:
        super().__init__(provider)  # done: an error ended the stream
        self._calls = 0
        self._model_sent = False

    def _handle(self, name: str, data: bytes, out: list[Event]) -> None:
        if self.done:
            return
        if self._typed(data, out):
            return
        try:
            obj = _loads(data)
        except orjson.JSONDecodeError:
            out.append((ev.ERROR, self._bad(f"not JSON: {data[:80]!r}")))
            return
        if type(obj) is list and obj and type(obj[0]) is dict:  # errors sometimes come as a one-item array
            obj = obj[0]
        if type(obj) is not dict:
            out.append((ev.ERROR, self._bad(f"not a JSON object: {data[:80]!r}")))
            return
        if obj.get("error"):
            self.done = True
            out.append((ev.ERROR, parse_openai_error(self.provider, obj, in_stream=True)))
            return
        candidates = obj.get("candidates")
        if candidates:
            cand = candidates[0]
            for part in (cand.get("content") or {}).get("parts") or ():
                text = part.get("text")
                if text:
                    out.append((ev.REASONING if part.get("thought") else ev.TOKEN, text))
                elif "functionCall" in part:
                    fc = part["functionCall"] or {}
                    out.append(
                        (
                            ev.TOOL_CALL,
                            {
                                "index": self._calls,
                                "id": fc.get("id") or f"call_{self._calls}",
                                "name": fc.get("name", ""),
                                "arguments": orjson.dumps(fc.get("args") or {}).decode(),
                            },
                        )
                    )
                    self._calls += 1
            self._finish(cand.get("finishReason"), out)
        else:
            block = (obj.get("promptFeedback") or {}).get("blockReason")
            if block:
                self.finished = True
                out.append((ev.FINISH, "content_filter"))
        self._usage_and_model(obj.get("usageMetadata"), obj.get("modelVersion"), out)

    def _typed(self, data: bytes, out: list[Event]) -> bool:
        """The usual chunk (text parts, then the end's reason and usage) without building dicts;
        False (nothing emitted) when it is anything else, for the tolerant path."""
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError:
            return False
        candidates = chunk.candidates
        if chunk.error or not candidates:
            return False
        cand = candidates[0]
        content = cand.content
        parts = content.parts if content is not None else None
        if parts:
            for part in parts:
                if not part.text:  # a function call, or an empty part: the tolerant path decides
                    return False
            for part in parts:
                out.append((ev.REASONING if part.thought else _TOKEN, part.text))
        self._finish(cand.finishReason, out)
        meta, usage = chunk.usageMetadata, None
        if meta is not None and (meta.candidatesTokenCount is not msgspec.UNSET or self.finished):
            usage = {name: v for name in _USAGE_FIELDS if (v := getattr(meta, name)) is not msgspec.UNSET}
        self._usage_and_model(usage, chunk.modelVersion, out)
        return True

    def _finish(self, reason: Any, out: list[Event]) -> None:
        if reason and type(reason) is str and reason != "FINISH_REASON_UNSPECIFIED":
            self.finished = True
            mapped = FINISH_REASONS.get(reason, reason.lower())
            if mapped == "stop" and self._calls:
                mapped = "tool_calls"
            out.append((ev.FINISH, mapped))

    def _usage_and_model(self, usage: Any, model: Any, out: list[Event]) -> None:
        # Chunks before the last carry only the prompt count: reporting those as usage would
        # claim 0 completion tokens for a stream cut mid-way (the relay estimates instead).
        if usage and type(usage) is dict and ("candidatesTokenCount" in usage or self.finished):
            out.append((ev.USAGE, _usage(usage)))
        if not self._model_sent and model:
            self._model_sent = True
            out.append((ev.MODEL, model))


def _usage(u: dict[str, Any]) -> dict[str, Any]:
    """Gemini bills thinking as output, so thoughts count as completion tokens."""
    prompt = u.get("promptTokenCount") or 0
    thoughts = u.get("thoughtsTokenCount") or 0
    completion = (u.get("candidatesTokenCount") or 0) + thoughts
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": u.get("totalTokenCount") or prompt + completion,
    }
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    if u.get("cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": u["cachedContentTokenCount"]}
    return out


# -- request conversion (pure) ----------------------------------------------------------


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for p in content or []:
        if not isinstance(p, dict):
            continue
        if p.get("type") == "text":
            parts.append({"text": p.get("text", "")})
        elif p.get("type") == "image_url":
            url = (p.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                mime, _, data = url[5:].partition(";base64,")
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            elif url:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def to_gemini_request(call: ChatCall) -> dict[str, Any]:
    """The gateway's OpenAI-style call as a ``generateContent`` body.

    System/developer turns become ``systemInstruction``; the assistant is role
    ``model``; tool results are ``functionResponse`` parts named after the call
    they answer; consecutive turns of one role are merged.
    """
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for m in call.messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system += _parts(m.get("content"))
            continue
        if role == "tool":
            raw = m.get("content")
            text = raw if isinstance(raw, str) else "".join(p.get("text", "") for p in raw or [] if isinstance(p, dict))
            try:
                response = orjson.loads(text)
            except orjson.JSONDecodeError:
                response = text
            if not isinstance(response, dict):
                response = {"result": response}
            name = call_names.get(m.get("tool_call_id", ""), m.get("name", ""))
            parts = [{"functionResponse": {"name": name, "response": response}}]
            grole = "user"
        else:
            parts = _parts(m.get("content"))
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                call_names[tc.get("id", "")] = fn.get("name", "")
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    args = {}
                parts.append({"functionCall": {"name": fn.get("name", ""), "args": args}})
            grole = "model" if role == "assistant" else "user"
        if contents and contents[-1]["role"] == grole:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": grole, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    p = call.params
    gen: dict[str, Any] = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        if p.get(ours) is not None:
            gen[theirs] = p[ours]
    max_tokens = p.get("max_tokens") or p.get("max_completion_tokens")
    if max_tokens:
        gen["maxOutputTokens"] = max_tokens
    stop = p.get("stop")
    if stop:
        gen["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = p.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
    if p.get("reasoning_effort"):
        gen["thinkingConfig"] = {"includeThoughts": True}
    if gen:
        body["generationConfig"] = gen
    tools = p.get("tools")
    if tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {
                        k: v
                        for k, v in (
                            ("name", (t.get("function") or {}).get("name", "")),
                            ("description", (t.get("function") or {}).get("description")),
                            ("parameters", (t.get("function") or {}).get("parameters")),
                        )
                        if v
                    }
                    for t in tools
                    if isinstance(t, dict)
                ]
            }
        ]
    choice = p.get("tool_choice")
    if choice is not None:
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice) if isinstance(choice, str) else None
        if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
            body["toolConfig"] = {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
            }
        elif mode:
            body["toolConfig"] = {"functionCallingConfig": {"mode": mode}}
    return body


class GeminiProvider(HTTPUpstream):
    """The Gemini API (``x-goog-api-key``); the model is part of the URL."""

    auth_header = "x-goog-api-key"
    auth_prefix = ""

    async def start(self, call: ChatCall) -> H1Stream:
        version = "" if self.base_url.endswith(("/v1beta", "/v1", "/v1alpha")) else "/v1beta"
        path = f"{version}/models/{quote(call.model, safe=_PATH_SAFE)}:streamGenerateContent?alt=sse"
        return await self.stream(path, to_gemini_request(call), GeminiStreamParser(self.name), call.headers)

    def error_for(self, status: int, headers: Mapping[str, str], raw: bytes) -> GatewayError:
        return error_from_response(self, status, headers, raw)
