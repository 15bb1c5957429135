"""The OpenAI-compatible chunk parser on recorded provider streams. (Split at every byte:
exhaustive/test_openai_every_split.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from parseref import openai_events as parse

from tokenwire.protocol import events as ev
from tokenwire.protocol.errors import GatewayError
from tokenwire.upstream.openai import parse_openai_error


def test_basic_counts_to_five(fixtures_dir: Path) -> None:
    events, _ = parse((fixtures_dir / "openai-chat-basic.sse").read_bytes())
    assert "".join(v for k, v in events if k == ev.TOKEN) == "1, 2, 3, 4, 5"
    assert [v for k, v in events if k == ev.FINISH] == ["stop"]
    assert not [v for k, v in events if k == ev.USAGE]


def test_usage_in_last_chunk_with_empty_choices(fixtures_dir: Path) -> None:
    events, _ = parse((fixtures_dir / "openai-chat-usage.sse").read_bytes())
    (usage,) = [v for k, v in events if k == ev.USAGE]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert [k for k, _ in events][-1] == ev.USAGE  # after the finish chunk


def test_deepseek_reasoning_kept_apart(fixtures_dir: Path) -> None:
    events, _ = parse((fixtures_dir / "deepseek-reasoning.sse").read_bytes())
    kinds = [k for k, _ in events]
    assert kinds.count(ev.REASONING) > 150
    assert kinds.index(ev.TOKEN) > max(i for i, k in enumerate(kinds) if k == ev.REASONING)
    (usage,) = [v for k, v in events if k == ev.USAGE]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 198


def test_tool_call_deltas_passed_on(fixtures_dir: Path) -> None:
    events, _ = parse((fixtures_dir / "openai-chat-toolcalls.sse").read_bytes())
    calls = [v for k, v in events if k == ev.TOOL_CALL]
    args: dict[int, str] = {}
    names = {}
    for c in calls:
        args[c["index"]] = args.get(c["index"], "") + c.get("arguments", "")
        if "name" in c:
            names[c["index"]] = c["name"]
    assert names == {0: "get_current_weather", 1: "get_current_weather"}
    assert "San Francisco" in json.loads(args[0])["location"]
    assert "Boston" in json.loads(args[1])["location"]
    assert [v for k, v in events if k == ev.FINISH] == ["tool_calls"]


def test_vllm_length_finish(fixtures_dir: Path) -> None:
    events, _ = parse((fixtures_dir / "vllm-openai.sse").read_bytes())
    assert [v for k, v in events if k == ev.FINISH] == ["length"]


def test_in_band_errors() -> None:
    groq = b'event: error\ndata: {"error":{"message":"boom","type":"server_error"}}\n\n'
    openrouter = b'data: {"choices":[],"error":{"message":"upstream died","code":502}}\n\ndata: [DONE]\n\n'
    for raw, text in ((groq, "boom"), (openrouter, "upstream died")):
        events, _ = parse(raw)
        (err,) = [v for k, v in events if k == ev.ERROR]
        assert isinstance(err, GatewayError) and text in err.message and err.code == "upstream_error"


def test_malformed_chunk_is_an_error_not_a_silent_drop() -> None:
    events, _ = parse(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {nope\n\n')
    assert events[0] == (ev.TOKEN, "a")
    assert events[1][0] == ev.ERROR and events[1][1].code == "upstream_bad_response"


def test_content_parts_list_mistral_style() -> None:
    chunk = {
        "choices": [
            {
                "delta": {
                    "content": [
                        {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]},
                        {"type": "text", "text": "Hi"},
                    ]
                }
            }
        ]
    }
    events, _ = parse(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    assert events == [(ev.REASONING, "hm"), (ev.TOKEN, "Hi")]


def test_http_429_body(fixtures_dir: Path) -> None:
    body = json.loads((fixtures_dir / "openai-error-429.json").read_text())
    err = parse_openai_error("openai", body, status=429)
    assert err.code == "upstream_rate_limited" and err.retryable and err.status == 429
    assert "Rate limit reached for 10KTPM-200RPM" in err.message


OPENAI_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"delta": {"content": "Hi"}, "logprobs": None}], "obfuscation": "x", "system_fingerprint": "fp"},
    {"choices": [{"delta": {"reasoning_content": "hmm"}}]},
    {"choices": [{"delta": {"reasoning": "also hmm", "content": " there"}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"function": {"name": "g"}}]}}]},
    {"choices": [{"delta": None}]},
    {"choices": []},
    {"choices": [{"delta": {"content": [{"type": "text", "text": "parts"}]}}]},  # typed decode refuses: dict path
    {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
]


def test_the_typed_chunk_path_agrees_with_the_dict_path() -> None:
    """An unnamed event takes the typed path; the same chunk as a named event takes the dict path:
    every chunk shape gives the same events either way."""
    from tokenwire.upstream.openai import OpenAIStreamParser

    typed, tolerant = OpenAIStreamParser("p"), OpenAIStreamParser("p")
    for p in (typed, tolerant):
        p.feed(b": started\n\n")
    for chunk in OPENAI_CHUNKS:
        data = json.dumps(chunk).encode()
        assert typed.feed(b"data: " + data + b"\n\n") == tolerant.feed(b"event: chunk\ndata: " + data + b"\n\n"), chunk
    assert typed.finished == tolerant.finished is True
