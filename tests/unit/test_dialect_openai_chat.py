"""The OpenAI Chat Completions dialect, event by event (no I/O): what each client reads."""

from __future__ import annotations

import orjson
import pytest

from tokenwire.dialects import openai_chat as oc
from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from tokenwire.protocol.frames import Limits

END_FIELDS = {"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def sse_events(data: bytes) -> list[object]:
    assert data.endswith(b"\n\n")
    out = []
    for block in data.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        payload = block[6:]
        out.append(payload.decode() if payload == b"[DONE]" else orjson.loads(payload))
    return out


def test_socket_chunks_carry_role_deltas_finish_and_usage() -> None:
    enc = oc.ChunkEncoder("s_1", "gpt-4.1", created=7)
    start = orjson.loads(enc.encode(b"", START, {}))
    assert start == {
        "id": "chatcmpl-s_1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "gpt-4.1",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }
    assert orjson.loads(enc.encode(b"", TOKEN, 'He said "hi"'))["choices"][0]["delta"] == {"content": 'He said "hi"'}
    assert orjson.loads(enc.encode(b"", REASONING, "hmm"))["choices"][0]["delta"] == {"reasoning_content": "hmm"}
    call = orjson.loads(enc.encode(b"", TOOL_CALL, {"index": 1, "id": "c", "name": "f", "arguments": "{"}))
    assert call["choices"][0]["delta"] == {
        "tool_calls": [{"index": 1, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}]
    }
    end = orjson.loads(enc.encode(b"", END, END_FIELDS))
    assert end["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert end["usage"] == END_FIELDS["usage"]
    # a cancelled reply ends as "stop"; a failed one ends with its error object only
    assert (
        orjson.loads(enc.encode(b"", END, {**END_FIELDS, "finish_reason": "cancelled"}))["choices"][0]["finish_reason"]
        == "stop"
    )
    assert enc.encode(b"", END, {**END_FIELDS, "finish_reason": "error"}) is None
    err = orjson.loads(enc.encode(b"", ERROR, GatewayError("upstream_error", "boom")))
    assert err["error"]["code"] == "upstream_error" and err["error"]["message"] == "boom"


@pytest.mark.parametrize("include_usage", [False, True])
def test_sse_stream_opens_with_the_role_and_ends_with_done(include_usage: bool) -> None:
    enc = oc.SSEChunkEncoder("s_2", "m", include_usage)
    assert enc.encode(b"", START, {}) is None  # nothing is sent before the first answer event
    first = sse_events(enc.encode(b"", TOKEN, "a"))
    assert [c["choices"][0]["delta"] for c in first] == [{"role": "assistant", "content": ""}, {"content": "a"}]
    assert [c["choices"][0]["delta"] for c in sse_events(enc.encode(b"", TOKEN, "b"))] == [{"content": "b"}]
    tail = sse_events(enc.encode(b"", END, END_FIELDS))
    assert tail[-1] == "[DONE]"
    assert tail[0]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    if include_usage:
        assert len(tail) == 3 and tail[1]["choices"] == [] and tail[1]["usage"] == END_FIELDS["usage"]
    else:
        assert len(tail) == 2


def test_sse_error_mid_stream_then_done_without_a_finish_chunk() -> None:
    enc = oc.SSEChunkEncoder("s_3", "m")
    enc.encode(b"", TOKEN, "x")
    err = sse_events(enc.encode(b"", ERROR, GatewayError("upstream_error", "cut")))
    assert err[0]["error"]["code"] == "upstream_error"
    assert sse_events(enc.encode(b"", END, {**END_FIELDS, "finish_reason": "error"})) == ["[DONE]"]


def test_completion_builder_accumulates_text_reasoning_and_tool_calls() -> None:
    b = oc.CompletionBuilder()
    for kind, value in [
        (TOKEN, "Hel"),
        (REASONING, "think"),
        (TOOL_CALL, {"index": 0, "id": "call_1", "name": "get_", "arguments": '{"a"'}),
        (TOOL_CALL, {"index": 0, "name": "weather", "arguments": ": 1}"}),
        (TOKEN, "lo"),
        (END, {**END_FIELDS, "cost_usd": 0.5, "status": "completed"}),
    ]:
        b.send(b"", kind, value)
    body = b.body("s_4", "gpt-4.1")
    assert b.refused is None
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello" and message["reasoning_content"] == "think"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"a": 1}'}}
    ]
    assert body["id"] == "chatcmpl-s_4" and body["usage"] == END_FIELDS["usage"]
    assert body["tokenwire"] == {"cost_usd": 0.5, "status": "completed"}


def test_a_failure_before_any_text_is_answered_with_its_status() -> None:
    b = oc.CompletionBuilder()
    b.send(b"", ERROR, GatewayError("upstream_rate_limited", "slow down"))
    assert b.refused is not None and b.refused.http_status == 429


def test_a_failure_after_some_text_is_answered_with_its_status_not_as_a_whole_reply() -> None:
    b = oc.CompletionBuilder()
    b.send(b"", TOKEN, "partial ")
    b.send(b"", ERROR, GatewayError("upstream_error", "the provider cut the stream", retryable=True))
    b.send(b"", END, {**END_FIELDS, "status": "failed"})
    assert b.refused is not None and b.refused.code == "upstream_error" and b.refused.http_status == 502


def test_parse_request_reads_params_and_refuses_bad_fields() -> None:
    limits = Limits()
    chat, stream, usage = oc.parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5,
            "n": 1,
            "store": False,
        },
        limits,
    )
    assert (chat.model, stream, usage, chat.params, chat.dialect) == ("m", True, True, {"temperature": 0.5}, "openai")
    for body, fragment in [
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, '"n" other than 1'),
        ({"messages": [{"role": "user", "content": "x"}], "n": True}, '"n" other than 1'),
        ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, 'send "tools"'),
        ({"messages": [{"role": "user", "content": "x"}], "function_call": "auto"}, "legacy function calling"),
        ({"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]}, "only text output"),
        ({"messages": [{"role": "user", "content": "x"}], "audio": {"voice": "alloy"}}, "only text output"),
        ({"messages": [{"role": "user", "content": "x"}], "stream_options": 1}, '"stream_options" must be'),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, '"stream" must be'),
        ({"model": "m"}, '"messages" is required'),
        ({"model": "", "messages": [{"role": "user", "content": "x"}]}, '"model" must be a non-empty string'),
        ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, '"model" must be a non-empty string'),
        ({"messages": [{"role": "user", "content": "x"}], "modle": "m"}, 'unknown parameter "modle"'),
    ]:
        with pytest.raises(GatewayError) as exc:
            oc.parse_request(body, limits)
        assert fragment in exc.value.message


def test_fields_that_change_nothing_here_are_accepted_and_ignored() -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "n": 1,
        "modalities": ["text"],
        "logprobs": True,
        "top_logprobs": 2,
        "store": False,
        "metadata": {"app": "a"},
        "service_tier": "auto",
        "functions": None,
        "stream_options": {"include_usage": True},
    }
    chat, stream, usage = oc.parse_request(body, Limits())
    assert chat.params == {} and stream is False and usage is True


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 5}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": 1}]},
            "messages[1].tool_calls",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ],
)
def test_a_refusal_names_its_field_in_param(body: dict, param: str) -> None:
    with pytest.raises(GatewayError) as exc:
        oc.parse_request(body, Limits())
    assert oc.error_body(exc.value)["error"]["param"] == param
