"""Anthropic and Gemini stream parsers on recorded streams and the request conversions (pure).
(Every recorded stream split at every byte: exhaustive/test_native_every_split.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parseref import run

from tokenwire.protocol import events as ev
from tokenwire.upstream.anthropic import AnthropicStreamParser, to_anthropic_request
from tokenwire.upstream.base import ChatCall
from tokenwire.upstream.gemini import GeminiStreamParser, to_gemini_request


def test_anthropic_basic_fields(fixtures_dir: Path) -> None:
    events, _ = run(AnthropicStreamParser, (fixtures_dir / "anthropic-messages-basic.sse").read_bytes())
    assert events[0] == (ev.MODEL, "claude-sonnet-4-5-20250929")
    assert [v for k, v in events if k == ev.TOKEN] == ["-", " Captain", "\n- Sc", "oop"]
    assert [v for k, v in events if k == ev.FINISH] == ["stop"]
    assert [v for k, v in events if k == ev.USAGE] == [
        {"prompt_tokens": 17, "completion_tokens": 10, "total_tokens": 27}
    ]


def test_anthropic_tool_use(fixtures_dir: Path) -> None:
    events, _ = run(AnthropicStreamParser, (fixtures_dir / "anthropic-messages-tooluse.sse").read_bytes())
    heads = [v for k, v in events if k == ev.TOOL_CALL and "name" in v]
    assert heads == [
        {"index": 0, "id": "toolu_014x5X91kx3fvdhpLvwXZWE2", "name": "get_weather"},
        {"index": 1, "id": "toolu_0121kXsENLvoDZ72LCuAnCCz", "name": "get_time"},
    ]
    assert [v for k, v in events if k == ev.FINISH] == ["tool_calls"]
    usage = [v for k, v in events if k == ev.USAGE][-1]
    assert usage["prompt_tokens"] == 506 and usage["completion_tokens"] == 153


def test_anthropic_overloaded_is_a_retryable_error(fixtures_dir: Path) -> None:
    raw = (fixtures_dir / "anthropic-overloaded.sse").read_bytes()
    for cut in range(1, len(raw)):
        events, _parser = run(AnthropicStreamParser, raw, (cut,))
        assert len(events) == 1 and events[0][0] == ev.ERROR
        err = events[0][1]
        assert err.code == "upstream_error" and err.retryable and "Overloaded" in err.message
        assert err.extra["upstream_type"] == "overloaded_error"


def test_anthropic_thinking_and_mid_stream_error() -> None:
    raw = (
        b'event: message_start\ndata: {"type":"message_start",'
        b'"message":{"model":"claude-x","usage":{"input_tokens":5}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"thinking","thinking":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"thinking_delta","thinking":"Let me think"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"signature_delta","signature":"abc"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_error","message":"nope"}}\n\n'
    )
    events, _ = run(AnthropicStreamParser, raw)
    assert [k for k, _ in events] == [ev.MODEL, ev.REASONING, ev.TOKEN, ev.ERROR]
    assert events[1][1] == "Let me think" and events[3][1].retryable is False


def test_gemini_thoughts_function_calls_and_errors() -> None:
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}], "role": "model"}}]},
        {"candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}}]},
        {
            "candidates": [
                {
                    "content": {"parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6, "thoughtsTokenCount": 3},
        },
    ]
    raw = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)
    events, _ = run(GeminiStreamParser, raw)
    assert events[0] == (ev.REASONING, "hmm") and events[1] == (ev.TOKEN, "ok")
    assert events[2] == (
        ev.TOOL_CALL,
        {"index": 0, "id": "call_0", "name": "get_weather", "arguments": '{"city":"Paris"}'},
    )
    assert (ev.FINISH, "tool_calls") in events
    usage = next(v for k, v in events if k == ev.USAGE)
    assert usage["completion_tokens"] == 9 and usage["completion_tokens_details"] == {"reasoning_tokens": 3}
    err_events, _ = run(GeminiStreamParser, b'data: {"error": {"code": 503, "message": "overloaded"}}\r\n\r\n')
    assert err_events[0][0] == ev.ERROR and err_events[0][1].retryable
    for reason, want in (("MAX_TOKENS", "length"), ("SAFETY", "content_filter")):
        chunk = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
        got, _ = run(GeminiStreamParser, b"data: " + json.dumps(chunk).encode() + b"\n\n")
        assert got[-1] == (ev.FINISH, want)


MESSAGES = [
    {"role": "system", "content": "Be brief"},
    {"role": "developer", "content": "Use metric"},
    {"role": "user", "content": "Weather?"},
    {"role": "user", "content": [{"type": "text", "text": "In Paris"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "wx", "arguments": '{"city":"Paris"}'}}],
    },
    {"role": "tool", "tool_call_id": "t1", "content": '{"temp": 21}'},
]


def test_anthropic_request_conversion() -> None:
    body = to_anthropic_request(ChatCall("claude-x", MESSAGES, {"temperature": 0.3, "stop": "END"}))
    assert body["system"] == "Be brief\n\nUse metric" and body["max_tokens"] == 4096 and body["stream"] is True
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Weather?"},
        {"type": "text", "text": "In Paris"},
    ]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "wx", "input": {"city": "Paris"}}
    ]
    assert body["messages"][2]["content"][0]["type"] == "tool_result"
    assert body["temperature"] == 0.3 and body["stop_sequences"] == ["END"]


def test_gemini_request_conversion() -> None:
    params = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "stop": ["END"]}
    body = to_gemini_request(ChatCall("gemini-x", MESSAGES, params))
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief"}, {"text": "Use metric"}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "wx", "args": {"city": "Paris"}}}]
    assert body["contents"][2]["parts"] == [{"functionResponse": {"name": "wx", "response": {"temp": 21}}}]
    assert body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.9,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
    }


def test_routing_config_is_checked(tmp_path: Path) -> None:
    from tokenwire.config import ConfigError, load_settings

    def load(body: str):
        cfg = tmp_path / "t.toml"
        cfg.write_text('[providers.a]\nkind = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n' + body)
        return load_settings(str(cfg), env={"HOME": str(tmp_path)})

    s = load(
        '[routing]\nmax_retries = 4\nfirst_token_timeout = 2.5\n[models.m]\ninput_per_mtok = 1\n[aliases]\nq = "m"\n'
    )
    assert (s.max_retries, s.first_token_timeout, s.models, s.aliases) == (
        4,
        2.5,
        {"m": {"input_per_mtok": 1.0}},
        {"q": "m"},
    )
    for body, message in (
        ("[models.m]\nprice = 1\n", "unknown key 'price'"),
        ("[models.m]\ninput_per_mtok = 'x'\n", "input_per_mtok must be a number"),
        ('[routes.m]\ndeployments = ["nope"]\n', "names no configured provider"),
        ('[routes.m]\nstrategy = "random"\n', "strategy must be one of"),
        ('[routes.m]\ndeployments = ["a"]\nweights = [1, 2]\n', "one number >= 0 per deployment"),
        ("[routing]\nmax_retries = 'x'\n", "max_retries must be a int"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(body)


def test_weighted_and_ordered_strategies_and_breaker() -> None:
    from tokenwire.runtime.routing import CLOSED, HALF_OPEN, OPEN, Deployment, Group, Policy
    from tokenwire.upstream.simulated import SimulatedProvider

    class T:  # a stand-in Route: only .deployment is used for ordering
        def __init__(self, name: str) -> None:
            self.deployment = Deployment(SimulatedProvider(name), "m", Policy())

    a, b = T("a"), T("b")
    assert Group([a, b], "weighted", [1, 0]).ordered() == [a, b]
    assert Group([a, b], "weighted", [0, 1]).ordered() == [b, a]
    firsts = [Group([a, b], "weighted", [3, 1]).ordered()[0] for _ in range(2000)]
    assert 0.70 < firsts.count(a) / 2000 < 0.80
    assert Group([b, a], "ordered").ordered() == [b, a]
    dep = Deployment(SimulatedProvider("x"), "m", Policy(circuit_failures=2, circuit_cooldown=10))
    dep.failure(now=0)
    assert dep.state == CLOSED and dep.admit(1)
    dep.failure(now=1)
    assert dep.state == OPEN and not dep.admit(5) and dep.retry_in(5) == 6
    assert dep.admit(11) and dep.state == HALF_OPEN  # one probe …
    assert not dep.admit(11.5)  # … at a time
    dep.success(0.2)
    assert dep.state == CLOSED and dep.failures == 0 and dep.latency == 0.2


def test_retry_after_in_every_form_providers_send() -> None:
    from email.utils import formatdate

    from tokenwire.upstream.base import retry_after_seconds

    now = 1_800_000_000.0
    assert retry_after_seconds({"Retry-After": "7"}, now) == 7.0
    assert retry_after_seconds({"Retry-After": "1.5"}, now) == 1.5
    assert retry_after_seconds({"Retry-After": formatdate(now + 30, usegmt=True)}, now) == 30.0
    assert retry_after_seconds({"Retry-After": formatdate(now - 30, usegmt=True)}, now) == 0.0  # already past
    assert retry_after_seconds({"retry-after-ms": "250", "Retry-After": "9"}, now) == 0.25  # the finer one wins
    assert retry_after_seconds({"Retry-After": "-3"}, now) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}, now) is None
    assert retry_after_seconds({}, now) is None


class _TolerantGemini(GeminiStreamParser):
    """The dict path only: what the typed path must agree with."""

    __slots__ = ()

    def _typed(self, data: bytes, out: list) -> bool:
        return False


_TEXT = {"content": {"parts": [{"text": "Hi"}], "role": "model"}}
GEMINI_CHUNKS = [
    {"candidates": [_TEXT], "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}, "modelVersion": "g-1"},
    {"candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}, {"text": " there"}]}}]},
    {"candidates": [_TEXT], "usageMetadata": {}},
    {"candidates": [_TEXT], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": None}},
    {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]}}]},
    {"candidates": [{"content": {"parts": []}, "finishReason": "FINISH_REASON_UNSPECIFIED"}]},
    {"candidates": [], "promptFeedback": {"blockReason": "SAFETY"}},
    {
        "candidates": [{"content": {"parts": [{"text": "."}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 4,
            "candidatesTokenCount": 6,
            "thoughtsTokenCount": 3,
            "cachedContentTokenCount": 2,
            "totalTokenCount": 13,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}],
        },
    },
]


@pytest.mark.parametrize("start", range(len(GEMINI_CHUNKS)))
def test_gemini_typed_path_agrees_with_the_dict_path(start: int) -> None:
    """Every chunk shape (usage with and without the candidates count, thoughts, a function call, a
    block, the end), from each starting point: the same events whichever path decodes it."""
    raw = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in GEMINI_CHUNKS[start:])
    typed, tolerant = GeminiStreamParser(), _TolerantGemini()
    for piece in raw.split(b"\r\n\r\n")[:-1]:  # one event per read: the fast paths
        piece += b"\r\n\r\n"
        assert typed.feed(piece) == tolerant.feed(piece), piece
    assert typed.close() == tolerant.close()
    assert (typed.finished, typed._calls) == (tolerant.finished, tolerant._calls)


ANTHROPIC_DELTAS = [
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"x":'}},
    {"type": "content_block_delta", "index": 7, "delta": {"type": "input_json_delta", "partial_json": "1}"}},
    {"type": "content_block_delta", "index": "1", "delta": {"type": "input_json_delta", "partial_json": "2"}},
    {"type": "content_block_delta", "index": 0, "delta": None},
    {"type": "content_block_delta", "index": 0},
    {"index": 0, "delta": {"type": "text_delta", "text": "no type"}},
]


def test_anthropic_typed_delta_agrees_with_the_dict_path() -> None:
    """A ``content_block_delta`` event takes the typed path; the same object in an unnamed event takes
    the dict path (its ``type`` names it): every shape gives the same events either way."""
    start = {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}
    typed, tolerant = AnthropicStreamParser(), AnthropicStreamParser()
    for p in (typed, tolerant):
        p.feed(b"data: {}\n\n")  # the decoder has started: the next reads take the fast paths
        p.feed(b"event: content_block_start\ndata: " + json.dumps(start).encode() + b"\n\n")
    for obj in ANTHROPIC_DELTAS:
        data = json.dumps(obj).encode()
        named = typed.feed(b"event: content_block_delta\ndata: " + data + b"\n\n")
        body = {**obj, "type": obj.get("type", "content_block_delta")}
        unnamed = tolerant.feed(b"data: " + json.dumps(body).encode() + b"\n\n")
        assert named == unnamed, obj
