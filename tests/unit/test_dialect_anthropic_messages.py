"""The Anthropic Messages dialect, event by event (no I/O): requests in, SSE events and bodies out."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenwire.dialects import anthropic_messages as am
from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from tokenwire.protocol.frames import Limits
from tokenwire.upstream.anthropic import to_anthropic_request
from tokenwire.upstream.base import ChatCall

USAGE = {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}
END_FIELDS = {"finish_reason": "stop", "usage": USAGE, "cost_usd": 0.0001, "provider": "p", "timing": {"ttft_ms": 1}}


def events(data: bytes) -> list[tuple[str, dict]]:
    """An SSE byte string as (event name, data object) pairs; every event has both lines."""
    assert data.endswith(b"\n\n")
    out = []
    for block in data.split(b"\n\n")[:-1]:
        name, data_line = block.split(b"\n")
        assert name.startswith(b"event: ") and data_line.startswith(b"data: "), block
        obj = orjson.loads(data_line[6:])
        assert obj["type"] == name[7:].decode()
        out.append((name[7:].decode(), obj))
    return out


def parse(**body):
    body.setdefault("model", "claude-x")
    body.setdefault("max_tokens", 100)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return am.parse_request(body, Limits())


# -- requests -------------------------------------------------------------------------------


def test_a_plain_request_becomes_an_openai_style_chat() -> None:
    chat, stream = parse(system="be brief", temperature=0.5, top_p=0.9, top_k=5, stream=True)
    assert stream is True and chat.model == "claude-x" and chat.dialect == "anthropic"
    assert chat.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert chat.params == {"max_tokens": 100, "temperature": 0.5, "top_p": 0.9}  # top_k is ignored


def test_content_blocks_tools_and_options_convert() -> None:
    body = {
        "system": [{"type": "text", "text": "one"}, {"type": "text", "text": "two", "cache_control": {}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather "}, {"type": "text", "text": "in SF?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "SF"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "9am"}]},
                    {"type": "text", "text": "thanks"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t3", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t3", "is_error": True}]},
        ],
        "stop_sequences": ["END"],
        "tools": [
            {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "metadata": {"user_id": "u-1"},
    }
    chat, stream = parse(**body)
    assert stream is False
    assert chat.messages == [
        {"role": "system", "content": "one\n\ntwo"},
        {"role": "user", "content": "weather in SF?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"SF"}'},
                },
                {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "9am"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "thanks"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t3", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "t3", "content": "Error: "},
    ]
    assert chat.params == {
        "max_tokens": 100,
        "stop": ["END"],
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}, "description": "Weather"},
            },
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "reasoning_effort": "medium",
        "user": "u-1",
    }


def test_the_conversion_mirrors_to_anthropic_request() -> None:
    """Decoding a Messages body and encoding it again for an Anthropic upstream gives the same request."""
    body = {
        "model": "claude-x",
        "max_tokens": 300,
        "system": "sys",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]},
        ],
        "temperature": 0.2,
        "stop_sequences": ["S"],
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "f"},
        "metadata": {"user_id": "u"},
    }
    chat, _ = am.parse_request(body, Limits())
    again = to_anthropic_request(ChatCall(model="claude-x", messages=chat.messages, params=chat.params))
    assert again == {**body, "stream": True}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": None}, '"max_tokens"'),
        ({"max_tokens": "5"}, '"max_tokens"'),
        ({"model": None}, '"model"'),
        ({"messages": []}, '"messages"'),
        ({"messages": [{"role": "tool", "content": "x"}]}, '"messages[0].role"'),
        ({"messages": [{"role": "system", "content": [{"type": "image"}]}]}, '"messages[0].content[0]"'),
        ({"messages": [{"role": "user", "content": 5}]}, '"messages[0].content"'),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, '"messages[0].content[0].type"'),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, '"messages[0].content[0]"'),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            '"messages[0].content[0].source.type"',
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
            '"messages[0].content[0]": tool_use',
        ),
        ({"system": 3}, '"system"'),
        ({"system": [{"type": "image"}]}, '"system[0]"'),
        ({"temperature": 1.5}, '"temperature"'),
        ({"top_p": "x"}, '"top_p"'),
        ({"stop_sequences": "END"}, '"stop_sequences"'),
        ({"tools": [{"name": "f"}]}, '"tools[0].input_schema"'),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, '"tools[0].type"'),
        ({"tool_choice": "auto"}, '"tool_choice"'),
        ({"tool_choice": {"type": "tool"}}, '"tool_choice.name"'),
        ({"thinking": {"type": "enabled"}}, '"thinking.budget_tokens"'),
        ({"thinking": {"type": "sometimes"}}, '"thinking.type"'),
        ({"thinking": "on"}, '"thinking.type"'),
        ({"output_config": {"effort": "extreme"}}, '"output_config.effort"'),
        ({"output_config": {"format": {"type": "regex"}}}, '"output_config.format"'),
        ({"output_config": []}, '"output_config"'),
        ({"stream": "yes"}, '"stream"'),
        ({"frobnicate": 1}, '"frobnicate"'),
    ],
)
def test_bad_requests_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(GatewayError) as exc:
        parse(**body)
    assert exc.value.code == "bad_request" and exc.value.http_status == 400
    assert field in exc.value.message


def test_system_turns_inside_the_conversation_keep_their_place() -> None:
    """Claude Code 2.1 sends them (the 2.x SDK's SystemMessageParam), with cache_control on the blocks."""
    chat, _ = parse(
        system="top",
        messages=[
            {"role": "user", "content": "a"},
            {"role": "system", "content": [{"type": "text", "text": "env", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "b"},
        ],
    )
    assert chat.messages == [
        {"role": "system", "content": "top"},
        {"role": "user", "content": "a"},
        {"role": "system", "content": "env"},
        {"role": "user", "content": "b"},
    ]


def test_thinking_budgets_map_to_reasoning_effort() -> None:
    assert [am.reasoning_effort(b) for b in (1024, 4095, 4096, 16383, 16384, 60000)] == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]
    chat, _ = parse(thinking={"type": "disabled"})
    assert "reasoning_effort" not in chat.params
    chat, _ = parse(thinking={"type": "adaptive", "display": "summarized"})
    assert chat.params["reasoning_effort"] == "medium"
    chat, _ = parse(thinking={"type": "adaptive"}, output_config={"effort": "max"})
    assert chat.params["reasoning_effort"] == "high"  # output_config.effort wins


def test_the_2_x_sdk_fields_are_taken_or_ignored() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat, _ = parse(
        output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}},
        cache_control={"type": "ephemeral"},
        diagnostics={"previous_message_id": None},
        speed="fast",
        service_tier="auto",
        inference_geo="us",
        user_profile_id="p",
        workspace_id="w",
    )
    assert chat.params == {
        "max_tokens": 100,
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}},
    }


# -- streamed replies -----------------------------------------------------------------------


def test_a_stream_event_by_event() -> None:
    enc = am.SSEEncoder("s_1", "claude-x", input_tokens=20)
    assert enc.encode(b"", START, {"model": "claude-x"}) is None  # nothing before the first answer event
    first = events(enc.encode(b"", REASONING, "Let me "))
    assert first == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_s_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 20, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}},
        ),
    ]
    assert events(enc.encode(b"", REASONING, "think")) == [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "think"}},
        )
    ]
    assert events(enc.encode(b"", TOKEN, 'He said "hi"')) == [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": 'He said "hi"'}},
        ),
    ]
    assert events(enc.encode(b"", TOKEN, "\n")) == [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "\n"}},
        )
    ]
    tool_start = events(enc.encode(b"", TOOL_CALL, {"index": 0, "id": "call_a", "name": "get_weather"}))
    assert tool_start == [
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
            },
        ),
    ]
    assert events(enc.encode(b"", TOOL_CALL, {"index": 0, "arguments": '{"city"'})) == [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '{"city"'},
            },
        )
    ]
    assert enc.encode(b"", TOOL_CALL, {"index": 0, "arguments": ""}) is None
    # a second call, its name and first arguments in one delta (as OpenAI often sends them)
    second = events(enc.encode(b"", TOOL_CALL, {"index": 1, "id": "call_b", "name": "get_time", "arguments": "{}"}))
    assert [name for name, _ in second] == ["content_block_stop", "content_block_start", "content_block_delta"]
    assert second[0][1]["index"] == 2 and second[1][1]["index"] == 3 and second[2][1]["index"] == 3
    # a late piece of the first call (providers interleaving parallel calls) names the first call's block
    assert events(enc.encode(b"", TOOL_CALL, {"index": 0, "arguments": ':"SF"}'}))[0][1]["index"] == 2
    end = events(enc.encode(b"", END, {**END_FIELDS, "finish_reason": "tool_calls"}))
    assert end == [
        ("content_block_stop", {"type": "content_block_stop", "index": 3}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"input_tokens": 21, "output_tokens": 7},
                "tokenwire": {"timing": {"ttft_ms": 1}, "cost_usd": 0.0001, "provider": "p"},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("cancelled", "end_turn"),
        (None, "end_turn"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(finish, stop) -> None:
    enc = am.SSEEncoder("s", "m")
    enc.encode(b"", TOKEN, "x")
    out = events(enc.encode(b"", END, {**END_FIELDS, "finish_reason": finish}))
    assert out[1][1]["delta"]["stop_reason"] == stop


def test_an_empty_reply_still_opens_and_closes_the_message() -> None:
    enc = am.SSEEncoder("s", "m")
    out = events(enc.encode(b"", END, END_FIELDS))
    assert [name for name, _ in out] == ["message_start", "message_delta", "message_stop"]


def test_a_failure_after_output_is_an_error_event_and_the_last_word() -> None:
    enc = am.SSEEncoder("s", "m")
    enc.encode(b"", TOKEN, "partial")
    out = events(enc.encode(b"", ERROR, GatewayError("upstream_unavailable", "the provider went away")))
    assert out == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "the provider went away"}})
    ]
    assert enc.encode(b"", END, {**END_FIELDS, "finish_reason": "error"}) is None


def test_cached_prompt_tokens_are_reported_as_anthropic_splits_them() -> None:
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 5, "cache_creation_tokens": 2}}
    enc = am.SSEEncoder("s", "m")
    out = events(enc.encode(b"", END, {**END_FIELDS, "usage": usage}))
    assert out[1][1]["usage"] == {
        "input_tokens": 21,
        "output_tokens": 7,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 5,
    }


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("bad_request", "invalid_request_error"),
        ("invalid_json", "invalid_request_error"),
        ("unauthorized", "authentication_error"),
        ("forbidden", "permission_error"),
        ("unknown_model", "not_found_error"),
        ("rate_limited", "rate_limit_error"),
        ("upstream_rate_limited", "rate_limit_error"),
        ("budget_exceeded", "billing_error"),
        ("frame_too_large", "request_too_large"),
        ("upstream_error", "api_error"),
        ("internal_error", "api_error"),
        ("upstream_unavailable", "overloaded_error"),
        ("shutting_down", "overloaded_error"),
        ("upstream_timeout", "timeout_error"),
        ("slow_consumer", "timeout_error"),  # 408: the client took too long to read, not a bad request
    ],
)
def test_error_bodies(code: str, kind: str) -> None:
    assert am.error_body(GatewayError(code, "why")) == {"type": "error", "error": {"type": kind, "message": "why"}}


# -- whole replies --------------------------------------------------------------------------


def test_a_whole_message_body() -> None:
    b = am.MessageBuilder()
    for kind, value in [
        (START, {}),
        (REASONING, "hm"),
        (REASONING, "m"),
        (TOKEN, "Hel"),
        (TOKEN, "lo"),
        (TOOL_CALL, {"index": 0, "id": "c1", "name": "f"}),
        (TOOL_CALL, {"index": 0, "arguments": '{"a":'}),
        (TOOL_CALL, {"index": 1, "name": "g"}),
        (TOOL_CALL, {"index": 0, "arguments": "1}"}),
        (END, {**END_FIELDS, "finish_reason": "tool_calls"}),
    ]:
        b.send(b"", kind, value)
    assert b.error is None
    assert b.body("s_9", "claude-x") == {
        "id": "msg_s_9",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "toolu_s_9_3", "name": "g", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 21, "output_tokens": 7},
        "tokenwire": {"timing": {"ttft_ms": 1}, "cost_usd": 0.0001, "provider": "p"},
    }


# -- any JSON at all ------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=5,
)
_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document", "x"])},
    optional={k: _json for k in ("text", "id", "name", "input", "tool_use_id", "content", "source", "is_error")},
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(max_size=5) | st.lists(_block)}
)
_body = st.fixed_dictionaries(
    {"model": st.just("m"), "max_tokens": st.just(5), "messages": st.lists(_message, min_size=1, max_size=3)},
    optional={
        k: _json
        for k in ("system", "tools", "tool_choice", "thinking", "metadata", "output_config", "stop_sequences", "top_p")
    },
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_body)
def test_any_body_is_a_chat_or_a_bad_request(body: dict) -> None:
    """Whatever a client sends, the answer is a chat or a GatewayError naming what to fix, never a crash."""
    try:
        chat, _ = am.parse_request(body, Limits())
    except GatewayError as err:
        assert err.code == "bad_request" and err.message
    else:
        orjson.dumps(chat.messages)
        assert all(m["role"] in ("system", "user", "assistant", "tool") for m in chat.messages)


def test_the_model_list_in_anthropic_shape() -> None:
    models = [
        {"id": "a", "object": "model", "created": 0, "owned_by": "x", "context_window": 1000, "pricing": {}},
        {"id": "b", "object": "model", "created": 0},
    ]
    assert am.model_list(models) == {
        "data": [
            {
                "type": "model",
                "id": "a",
                "display_name": "a",
                "created_at": "1970-01-01T00:00:00Z",
                "max_input_tokens": 1000,
                "owned_by": "x",
                "context_window": 1000,
                "pricing": {},
            },
            {"type": "model", "id": "b", "display_name": "b", "created_at": "1970-01-01T00:00:00Z"},
        ],
        "has_more": False,
        "first_id": "a",
        "last_id": "b",
    }
    assert am.model_list([]) == {"data": [], "has_more": False, "first_id": None, "last_id": None}


def test_a_claude_code_2_1_request_is_taken() -> None:
    """The shape Claude Code 2.1.332 sends (captured, trimmed): every field is understood or ignored."""
    body = {
        "model": "claude-sonnet-4.5",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332;"},
            {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>…</system-reminder>"}]},
            {
                "role": "system",
                "content": [{"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": [{"type": "text", "text": "weather in SF?"}]},
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}, "defer_loading": False}
        ],
        "metadata": {"user_id": '{"device_id":"d","account_uuid":"","session_id":"s"}'},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    }
    chat, stream = am.parse_request(body, Limits())
    assert stream is True
    assert [m["role"] for m in chat.messages] == ["system", "user", "system", "user"]
    assert chat.params["reasoning_effort"] == "high" and chat.params["max_tokens"] == 32000
    assert chat.params["tools"][0]["function"]["name"] == "Bash"


def test_model_list_pages_as_the_sdk_asks() -> None:
    models = [{"id": x} for x in "abcde"]

    def ids(page: dict) -> tuple[list[str], bool]:
        return [m["id"] for m in page["data"]], page["has_more"]

    assert ids(am.model_list(models)) == (list("abcde"), False)
    assert ids(am.model_list(models, 2)) == (["a", "b"], True)
    assert ids(am.model_list(models, 2, after_id="b")) == (["c", "d"], True)
    assert ids(am.model_list(models, 2, after_id="d")) == (["e"], False)
    assert ids(am.model_list(models, 2, before_id="d")) == (["b", "c"], True)
    assert ids(am.model_list(models, 5, before_id="c")) == (["a", "b"], False)
