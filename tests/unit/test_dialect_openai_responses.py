"""The OpenAI Responses dialect, event by event (no I/O), checked with the SDK's own types.

Every encoded event is validated as the ``openai`` SDK's ``ResponseStreamEvent`` union and
fed through its typed-stream accumulator (``ResponseStreamState``), which is what
``client.responses.stream(...).get_final_response()`` runs.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tokenwire.dialects import openai_responses as rd
from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from tokenwire.protocol.frames import Limits
from tokenwire.protocol.stream import Generation

EVENT = TypeAdapter(ResponseStreamEvent)
RID = "resp_6b0000000123456789abcdef01234567"
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def echo(**more: Any) -> dict[str, Any]:
    req = rd.parse_request({"model": "gpt-4.1", "input": "hi", **more}, Limits())
    return {**req.echo, "model": "gpt-4.1", "background": False, "store": True}


def sse(data: bytes) -> list[dict[str, Any]]:
    """SSE frames -> event objects; every frame has ``event:`` equal to its data's type."""
    out = []
    assert data.endswith(b"\n\n")
    for block in data.split(b"\n\n")[:-1]:
        head, body = block.split(b"\n", 1)
        assert head.startswith(b"event: ") and body.startswith(b"data: "), block
        obj = orjson.loads(body[6:])
        assert obj["type"] == head[7:].decode()
        out.append(obj)
    return out


def log_of(events: list[tuple[int, Any]]) -> tuple[Generation, list[tuple[bytes, int, Any]]]:
    """The run's log for these events, as a run hands them to subscribers."""
    gen = Generation(RID)
    out = []
    for kind, value in events:
        if kind == START:
            rest = gen.start(value)
        elif kind == TOKEN:
            rest = gen.token(value)
        elif kind == REASONING:
            rest = gen.reasoning(value)
        elif kind == TOOL_CALL:
            rest = gen.tool_call(value)
        elif kind == ERROR:
            rest = gen.error(value)
        else:
            rest = gen.end(value.pop("_status", "completed"), value)
        out.append((rest, kind, value))
    return gen, out


def encode_all(enc: rd.ResponsesEncoder, events: list[tuple[bytes, int, Any]]) -> bytes:
    return b"".join(enc.encode(rest, kind, value) or b"" for rest, kind, value in events)


def sdk_final(events: list[dict[str, Any]]) -> Any:
    """What the SDK's typed stream ends with for these events (and each one validates)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for obj in events:
        state.handle_event(EVENT.validate_python(obj))
    return state._completed_response


MIXED = [
    (START, {"model": "deepseek-v3.2", "provider": "p"}),
    (REASONING, "Let me "),
    (REASONING, "think."),
    (TOKEN, 'He said "hi"'),
    (TOKEN, " twice"),
    (TOOL_CALL, {"index": 0, "id": "call_a", "name": "get_weather", "arguments": '{"city":'}),
    (TOOL_CALL, {"index": 0, "arguments": '"Paris"}'}),
    (TOOL_CALL, {"index": 1, "id": "call_b", "name": "get_time", "arguments": "{}"}),
    (END, {"finish_reason": "tool_calls", "usage": USAGE, "timing": {"total_ms": 2500.0}, "model": "deepseek-v3.2"}),
]


def test_mixed_reply_is_a_valid_sdk_stream_with_contiguous_sequence_numbers() -> None:
    _, log = log_of(list(MIXED))
    events = sse(encode_all(rd.ResponsesEncoder(RID, echo()), log))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = sdk_final(events)
    assert final.id == RID and final.status == "completed" and final.model == "deepseek-v3.2"
    assert final.output_text == 'He said "hi" twice'
    reasoning, message, call_a, call_b = final.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "Let me think."
    assert message.type == "message" and message.status == "completed"
    assert (call_a.call_id, call_a.name, call_a.arguments) == ("call_a", "get_weather", '{"city":"Paris"}')
    assert (call_b.call_id, call_b.name, call_b.arguments) == ("call_b", "get_time", "{}")
    assert [i.id for i in final.output] == [f"{p}_{RID[5:]}_{n}" for n, p in enumerate(("rs", "msg", "fc", "fc"))]
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 7 and final.usage.total_tokens == 18
    assert final.created_at == 0x6B000000 and final.completed_at == 0x6B000000 + 2


def test_replay_after_n_is_the_live_stream_minus_its_first_n_plus_one_events() -> None:
    gen, log = log_of(list(MIXED))
    live = encode_all(rd.ResponsesEncoder(RID, echo()), log)
    frames = live.split(b"\n\n")[:-1]
    for n in (-1, 0, 3, 11, len(frames) - 2):
        enc = rd.ResponsesEncoder(RID, echo(), starting_after=n)
        replay = b""
        for rest in gen.after(-1):  # what another instance has: the logged bytes only
            kind, value = rd.decode_rest(rest)
            replay += enc.encode(rest, kind, value) or b""
        assert replay.split(b"\n\n")[:-1] == frames[n + 1 :], n


def test_the_stored_response_equals_the_completed_one() -> None:
    """``finish`` (run by the end hook before ``end`` goes out) gives the object ``response.completed`` carries."""
    _, log = log_of(list(MIXED))
    enc = rd.ResponsesEncoder(RID, echo())
    encode_all(enc, log[:-1])
    stored = enc.finish(dict(MIXED[-1][1]))
    encode_all(enc, log[-1:])
    assert stored == enc.final
    Response.model_validate(stored)


def test_nothing_is_sent_at_start_so_a_refusal_can_still_be_an_http_status() -> None:
    enc = rd.ResponsesEncoder(RID, echo())
    assert enc.encode(b"", START, {"model": "gpt-4.1"}) is None
    assert enc.seq == 0


def test_a_failure_mid_reply_sends_error_then_response_failed() -> None:
    err = GatewayError("upstream_error", "provider hung up", retryable=True)
    _, log = log_of(
        [
            (START, {"model": "gpt-4.1"}),
            (TOKEN, "par"),
            (ERROR, err),
            (END, {"_status": "failed", "finish_reason": "error", "usage": USAGE, "error": {"code": "upstream_error"}}),
        ]
    )
    events = sse(encode_all(rd.ResponsesEncoder(RID, echo()), log))
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "upstream_error" and error["message"] == "provider hung up"
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"] == {
        "code": "server_error",
        "message": "provider hung up",
        "type": "upstream_error",
    }
    assert last["response"]["output"][0]["content"][0]["text"] == "par"
    assert last["response"]["output"][0]["status"] == "incomplete"
    for e in events:
        EVENT.validate_python(e)


@pytest.mark.parametrize(("reason", "status", "details"), [("length", "incomplete", "max_output_tokens")])
def test_max_tokens_is_response_incomplete(reason: str, status: str, details: str) -> None:
    _, log = log_of([(START, {}), (TOKEN, "a"), (END, {"finish_reason": reason, "usage": USAGE})])
    last = sse(encode_all(rd.ResponsesEncoder(RID, echo(max_output_tokens=1)), log))[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == status and last["response"]["incomplete_details"] == {"reason": details}
    assert last["response"]["max_output_tokens"] == 1
    EVENT.validate_python(last)


def test_a_cancelled_response_ends_incomplete_with_status_cancelled() -> None:
    _, log = log_of([(START, {}), (TOKEN, "a"), (END, {"_status": "cancelled", "finish_reason": "cancelled"})])
    last = sse(encode_all(rd.ResponsesEncoder(RID, echo()), log))[-1]
    assert last["type"] == "response.incomplete" and last["response"]["status"] == "cancelled"
    EVENT.validate_python(last)


def test_background_response_is_created_queued() -> None:
    enc = rd.ResponsesEncoder(RID, {**echo(), "background": True})
    created = sse(enc.encode(b"", TOKEN, "x") or b"")[0]
    assert created["type"] == "response.created" and created["response"]["status"] == "queued"
    assert created["response"]["background"] is True


# -- requests ------------------------------------------------------------------


def test_input_items_become_chat_messages() -> None:
    req = rd.parse_request(
        {
            "model": "gpt-4.1",
            "instructions": "Be brief.",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "weather in "},
                        {"type": "input_text", "text": "Paris?"},
                    ],
                },
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "noon"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
            ],
            "max_output_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "reasoning": {"effort": "low"},
            "tools": [
                {"type": "function", "name": "get_weather", "description": "w", "parameters": {"type": "object"}}
            ],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "metadata": {"k": "v"},
        },
        Limits(),
    )
    assert req.chat.messages == [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
    ]
    assert req.instructions == "Be brief."
    assert req.chat.params == {
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "reasoning_effort": "low",
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}, "description": "w"},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    assert req.store is True and req.background is False and req.stream is False
    assert req.echo["metadata"] == {"k": "v"} and req.echo["tools"][0]["name"] == "get_weather"


def test_a_string_input_is_one_user_message_and_images_stay_parts() -> None:
    assert rd.parse_request({"input": "hey"}, Limits()).chat.messages == [{"role": "user", "content": "hey"}]
    req = rd.parse_request(
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                    ],
                }
            ]
        },
        Limits(),
    )
    assert req.chat.messages[0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "frequency_penalty": 1}, "frequency_penalty"),
        ({"input": "x", "conversation": "c"}, "conversation"),
        ({}, "input"),
        ({"input": 3}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort"),
        ({"input": "x", "reasoning": {"budget": 3}}, "reasoning.budget"),
        ({"input": "x", "background": True, "store": False}, "background"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "previous_response_id": "chatcmpl-1"}, "previous_response_id"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as exc:
        rd.parse_request(body, Limits())
    assert exc.value.code == "bad_request" and exc.value.http_status == 400
    error = rd.error_body(exc.value)["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_response_ids_carry_their_creation_time() -> None:
    rid = rd.new_response_id(0x6B123456)
    assert rd.is_response_id(rid) and rid.startswith("resp_6b123456")
    assert rd.created_at(rid) == 0x6B123456
    assert not rd.is_response_id("resp_../../etc")


def test_websocket_mode_is_one_json_event_per_line_with_the_same_numbers() -> None:
    _, log = log_of(list(MIXED))
    sse_events = sse(encode_all(rd.ResponsesEncoder(RID, echo()), log))
    lines = encode_all(rd.ResponsesEncoder(RID, echo(), ws=True), log)
    assert lines.endswith(b"\n") and b"event:" not in lines
    assert [orjson.loads(line) for line in lines.split(b"\n")[:-1]] == sse_events
