"""How the fake upstream spells a streamed reply in each provider's wire format (pure).

A wire turns the deterministic reply into bytes: the opening events, one event
per token, the tail (finish reason and usage), an in-band error, and an HTTP
error body. The same pacing and fault logic in :mod:`.server` drives all three.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = ["AnthropicWire", "GeminiWire", "OpenAIWire", "Wire"]

_dumps = orjson.dumps


class Wire:
    """OpenAI Chat Completions chunks (the default)."""

    name = "openai"
    content_type = "text/event-stream; charset=utf-8"

    def __init__(self, model: str, prompt_tokens: int, include_usage: bool) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.head = (
            b'data: {"id":"chatcmpl-sim","object":"chat.completion.chunk","created":%d,"model":%b,'
            b'"system_fingerprint":null,"choices":[{"index":0,"delta":' % (int(time.time()), _dumps(model))
        )

    def open(self) -> bytes:
        return self.head + b'{"role":"assistant","content":""},"finish_reason":null}],"usage":null}\n\n'

    def token(self, token: str) -> bytes:
        return self.head + b'{"content":' + _dumps(token) + b'},"finish_reason":null}],"usage":null}\n\n'

    def malformed(self) -> bytes:
        return b"data: {this is not json\n\n"

    def reasoning(self, token: str) -> bytes:
        return self.head + b'{"reasoning_content":' + _dumps(token) + b'},"finish_reason":null}],"usage":null}\n\n'

    def end_reasoning(self) -> bytes:
        return b""

    def error(self) -> bytes:
        err = {"error": {"message": "Simulated mid-stream failure", "type": "server_error", "code": 500}}
        return b"data: " + _dumps(err) + b"\n\ndata: [DONE]\n\n"

    def tail(self, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }
        tail = self.head + b'{},"finish_reason":"stop"}],"usage":null}\n\n'
        if self.include_usage:
            tail += (
                b'data: {"id":"chatcmpl-sim","object":"chat.completion.chunk","created":0,'
                b'"model":' + _dumps(self.model) + b',"choices":[],"usage":' + _dumps(usage) + b"}\n\n"
            )
        return tail + b"data: [DONE]\n\n"

    @staticmethod
    def error_body(status: int) -> bytes:
        kinds = {
            429: ("Rate limit reached for requests. Please try again in 1s.", "requests", "rate_limit_exceeded"),
            500: ("The server had an error while processing your request.", "server_error", None),
            503: ("The engine is currently overloaded, please try again later.", "server_error", None),
            401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
            400: ("Invalid request.", "invalid_request_error", None),
        }
        message, kind, code = kinds.get(status, ("Simulated error.", "server_error", None))
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


OpenAIWire = Wire


def _event(name: bytes, obj: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + _dumps(obj) + b"\n\n"


class AnthropicWire(Wire):
    """Anthropic Messages events: message_start, content_block_*, ping, message_delta, message_stop."""

    name = "anthropic"

    def __init__(self, model: str, prompt_tokens: int, include_usage: bool, max_tokens: int = 0) -> None:
        super().__init__(model, prompt_tokens, include_usage)
        self.max_tokens = max_tokens
        self.text_index = 0  #: content-block index of the answer (1 after a thinking block)

    def reasoning(self, token: str) -> bytes:
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"thinking_delta","thinking":' + _dumps(token) + b"}}\n\n"
        )

    def end_reasoning(self) -> bytes:
        """Close the thinking block (with its signature, as Anthropic sends it) and open the text block."""
        signature = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "c2lt"},
        }
        text_start = {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}
        return (
            _event(b"content_block_delta", signature)
            + _event(b"content_block_stop", {"type": "content_block_stop", "index": 0})
            + _event(b"content_block_start", text_start)
        )

    def open(self) -> bytes:
        message = {
            "id": "msg_sim",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 1},
        }
        return (
            _event(b"message_start", {"type": "message_start", "message": message})
            + _event(
                b"content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""} if self.text_index else {"type": "text"},
                },
            )
            + b'event: ping\ndata: {"type": "ping"}\n\n'
        )

    def token(self, token: str) -> bytes:
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"text_delta","text":%b}}\n\n' % (self.text_index, _dumps(token))
        )

    def malformed(self) -> bytes:
        return b"event: content_block_delta\ndata: {this is not json\n\n"

    def error(self) -> bytes:
        err = {"type": "error", "error": {"details": None, "type": "overloaded_error", "message": "Overloaded"}}
        return _event(b"error", err)

    def tail(self, completion_tokens: int) -> bytes:
        reason = "max_tokens" if self.max_tokens and completion_tokens >= self.max_tokens else "end_turn"
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": completion_tokens},
        }
        return (
            _event(b"content_block_stop", {"type": "content_block_stop", "index": self.text_index})
            + _event(b"message_delta", delta)
            + _event(b"message_stop", {"type": "message_stop"})
        )

    @staticmethod
    def error_body(status: int) -> bytes:
        kinds = {
            400: ("invalid_request_error", "Invalid request."),
            401: ("authentication_error", "invalid x-api-key"),
            429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
            500: ("api_error", "Internal server error"),
            529: ("overloaded_error", "Overloaded"),
        }
        kind, message = kinds.get(status, ("api_error", "Simulated error."))
        return _dumps({"type": "error", "error": {"type": kind, "message": message}})


class GeminiWire(Wire):
    """Gemini ``alt=sse`` chunks: CRLF line ends, usage on every chunk, no terminator."""

    name = "gemini"

    def open(self) -> bytes:
        return b""

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"

    def token(self, token: str) -> bytes:
        return self._chunk(
            {
                "candidates": [{"content": {"parts": [{"text": token}], "role": "model"}}],
                "usageMetadata": {"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens},
                "modelVersion": self.model,
            }
        )

    def malformed(self) -> bytes:
        return b"data: {this is not json\r\n\r\n"

    def reasoning(self, token: str) -> bytes:
        return self._chunk(
            {
                "candidates": [{"content": {"parts": [{"text": token, "thought": True}], "role": "model"}}],
                "usageMetadata": {"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens},
                "modelVersion": self.model,
            }
        )

    def error(self) -> bytes:
        return self._chunk({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})

    def tail(self, completion_tokens: int) -> bytes:
        return self._chunk(
            {
                "candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP"}],
                "usageMetadata": {
                    "promptTokenCount": self.prompt_tokens,
                    "candidatesTokenCount": completion_tokens,
                    "totalTokenCount": self.prompt_tokens + completion_tokens,
                },
                "modelVersion": self.model,
            }
        )

    @staticmethod
    def error_body(status: int) -> bytes:
        kinds = {
            400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
            403: ("PERMISSION_DENIED", "API key not valid."),
            429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
            500: ("INTERNAL", "An internal error has occurred."),
            503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
        }
        kind, message = kinds.get(status, ("UNKNOWN", "Simulated error."))
        return _dumps([{"error": {"code": status, "message": message, "status": kind}}])
