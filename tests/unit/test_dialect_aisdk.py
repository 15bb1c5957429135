"""The Vercel AI SDK dialect (UI message stream, WebSocketChatTransport frames), event by event."""

from __future__ import annotations

import orjson
import pytest

from tokenwire.dialects import aisdk, aisdk_ws
from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.events import END, ERROR, REASONING, START, TOKEN, TOOL_CALL
from tokenwire.protocol.frames import Limits
from tokenwire.protocol.stream import Generation

LIMITS = Limits()


def user(text: str, id: str = "u1") -> dict:
    return {"id": id, "role": "user", "parts": [{"type": "text", "text": text}]}


def body(**more) -> dict:
    return {"id": "chat-1", "messages": [user("hi")], "trigger": "submit-message", "messageId": None, **more}


def sse_chunks(data: bytes) -> list:
    out = []
    for block in data.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: "), block
            out.append(block[6:].decode() if block == b"data: [DONE]" else orjson.loads(block[6:]))
    return out


END_OK = {
    "status": "completed",
    "finish_reason": "stop",
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    "cost_usd": 0.0001,
    "model": "gpt-4.1",
    "provider": "openai",
    "timing": {"ttft_ms": 1.0},
}


# -- requests -------------------------------------------------------------------------
def test_a_default_chat_transport_body_becomes_a_chat() -> None:
    chat, req = aisdk.parse_request(
        body(model="gpt-4.1", temperature=0.5, maxOutputTokens=64, topP=0.9, system="be brief", anything="kept out"),
        LIMITS,
    )
    assert chat.model == "gpt-4.1"
    assert chat.params == {"temperature": 0.5, "max_tokens": 64, "top_p": 0.9}
    assert chat.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (req.chat_id, req.trigger, req.message_id) == ("chat-1", "submit-message", None)


def test_assistant_tool_parts_become_tool_calls_and_results_per_step() -> None:
    messages = [
        user("weather?"),
        {
            "id": "a1",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "thinking"},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool-get_weather",
                    "toolCallId": "call_1",
                    "state": "output-available",
                    "input": {"city": "Paris"},
                    "output": {"temp": 21},
                },
                {"type": "step-start"},
                {"type": "text", "text": "It is 21."},
            ],
        },
        user("thanks", "u2"),
    ]
    chat, req = aisdk.parse_request(body(messages=messages), LIMITS)
    assert chat.messages == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp":21}'},
        {"role": "assistant", "content": "It is 21."},
        {"role": "user", "content": "thanks"},
    ]
    assert req.message_id is None


def test_a_reply_continuing_the_assistant_message_keeps_its_id() -> None:
    messages = [user("x"), {"id": "a7", "role": "assistant", "parts": [{"type": "text", "text": "partial"}]}]
    _, req = aisdk.parse_request(body(messages=messages), LIMITS)
    assert req.message_id == "a7"
    _, req = aisdk.parse_request(body(messages=messages, trigger="regenerate-message"), LIMITS)
    assert req.message_id is None


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"messages": [{"id": "u", "role": "user", "parts": [{"type": "file", "url": "x", "mediaType": "a/b"}]}]},
            "file",
        ),
        ({"messages": [{"id": "u", "role": "user", "content": "old v4 shape"}]}, "parts"),
        ({"messages": []}, "empty"),
        ({"trigger": "resume"}, "trigger"),
        ({"id": "a/b"}, '"id"'),
        ({"temperature": 7}, "temperature"),
        ({"maxOutputTokens": "many"}, "max_tokens"),
        ({"model": 3}, "model"),
    ],
)
def test_bad_input_names_the_field(change: dict, needle: str) -> None:
    with pytest.raises(GatewayError) as info:
        aisdk.parse_request(body(**change), LIMITS)
    assert info.value.code == "bad_request" and info.value.http_status == 400
    assert needle in info.value.message


# -- the UI message stream ------------------------------------------------------------
def test_text_then_finish_with_usage_and_cost() -> None:
    enc = aisdk.SSEEncoder("msg_1")
    out = b""
    for kind, value in [(START, {"model": "m"}), (TOKEN, "Hel"), (TOKEN, "lo"), (END, END_OK)]:
        out += enc.encode(b"", kind, value) or b""
    assert sse_chunks(out) == [
        {"type": "start", "messageId": "msg_1"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "Hel"},
        {"type": "text-delta", "id": "text-0", "delta": "lo"},
        {"type": "text-end", "id": "text-0"},
        {"type": "finish-step"},
        {
            "type": "finish",
            "finishReason": "stop",
            "messageMetadata": {
                "model": "gpt-4.1",
                "provider": "openai",
                "usage": END_OK["usage"],
                "cost_usd": 0.0001,
                "timing": {"ttft_ms": 1.0},
            },
        },
        "[DONE]",
    ]


def test_start_is_held_back_until_the_first_answer_event() -> None:
    assert aisdk.SSEEncoder("m").encode(b"", START, {}) is None


def test_reasoning_then_text_are_separate_parts() -> None:
    ui = aisdk.UIChunks("m")
    chunks = []
    for kind, value in [(REASONING, "hmm"), (REASONING, "."), (TOKEN, "A"), (END, END_OK)]:
        chunks += [orjson.loads(c) for c in ui.chunks(kind, value)]
    assert [c["type"] for c in chunks] == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert chunks[2]["id"] == chunks[3]["id"] == chunks[5]["id"] == "reasoning-0"
    assert chunks[6]["id"] == "text-1"


def test_tool_call_deltas_become_tool_input_chunks() -> None:
    ui = aisdk.UIChunks("m")
    events = [
        (TOOL_CALL, {"index": 0, "id": "call_a", "name": "get_weather", "arguments": ""}),
        (TOOL_CALL, {"index": 0, "arguments": '{"ci'}),
        (TOOL_CALL, {"index": 0, "arguments": 'ty":"Paris"}'}),
        (TOOL_CALL, {"index": 1, "id": "call_b", "name": "noop"}),
        (END, {**END_OK, "finish_reason": "tool_calls"}),
    ]
    chunks = []
    for kind, value in events:
        chunks += [orjson.loads(c) for c in ui.chunks(kind, value)]
    assert chunks[2:] == [
        {"type": "tool-input-start", "toolCallId": "call_a", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '{"ci'},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": 'ty":"Paris"}'},
        {"type": "tool-input-start", "toolCallId": "call_b", "toolName": "noop"},
        {"type": "tool-input-available", "toolCallId": "call_a", "toolName": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool-input-available", "toolCallId": "call_b", "toolName": "noop", "input": {}},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls", "messageMetadata": chunks[-1]["messageMetadata"]},
    ]


def test_an_error_mid_reply_is_an_error_chunk_then_done() -> None:
    enc = aisdk.SSEEncoder("m")
    out = enc.encode(b"", TOKEN, "x") or b""
    out += enc.encode(b"", ERROR, GatewayError("upstream_error", "provider broke")) or b""
    assert enc.encode(b"", END, {**END_OK, "finish_reason": "error"}) is None
    chunks = sse_chunks(out)
    assert chunks[-3:] == [
        {"type": "text-end", "id": "text-0"},
        {"type": "error", "errorText": "provider broke (upstream_error)"},
        "[DONE]",
    ]


def test_a_cancelled_reply_ends_with_abort() -> None:
    enc = aisdk.SSEEncoder("m")
    out = (enc.encode(b"", TOKEN, "x") or b"") + (enc.encode(b"", END, {"finish_reason": "cancelled"}) or b"")
    chunks = sse_chunks(out)
    assert chunks[-2:] == [{"type": "abort", "reason": "cancelled"}, "[DONE]"]
    assert "finish" not in [c["type"] for c in chunks if isinstance(c, dict)]


def _generation() -> tuple[Generation, list[tuple[bytes, int, object]]]:
    gen = Generation("s_test_stream")
    live = [(gen.start({"model": "m"}), START, {"model": "m"})]
    live.append((gen.reasoning("think"), REASONING, "think"))
    for t in ["a", "b", "c"]:
        live.append((gen.token(t), TOKEN, t))
    delta = {"index": 0, "id": "call_1", "name": "f", "arguments": '{"x":1}'}
    live.append((gen.tool_call(delta), TOOL_CALL, delta))
    live.append((gen.end("completed", END_OK), END, END_OK))
    return gen, live


def test_a_replay_of_the_log_gives_the_same_bytes_as_the_live_stream() -> None:
    gen, live = _generation()
    a, b = aisdk.SSEEncoder("m"), aisdk.SSEEncoder("m")
    live_out = b"".join(a.encode(*e) or b"" for e in live)
    replay_out = b"".join(b.encode(rest, 0, None) or b"" for rest in gen.after(-1))
    assert live_out == replay_out and live_out.endswith(b"data: [DONE]\n\n")


# -- WebSocketChatTransport frames ----------------------------------------------------
def test_aisdk_frames_are_told_from_v1_frames() -> None:
    assert aisdk_ws.is_aisdk_frame('{"type":"send","requestId":"r1","id":"c"}')
    assert aisdk_ws.is_aisdk_frame('{"type":"abort","requestId":"r1"}')
    assert not aisdk_ws.is_aisdk_frame('{"type":"resume","id":"g1"}')  # protocol v1's resume
    assert not aisdk_ws.is_aisdk_frame('{"type":"chat","id":"g1","content":"requestId"}')
    assert not aisdk_ws.is_aisdk_frame("not json requestId")


def test_send_resume_abort_frames_parse() -> None:
    send = aisdk_ws.parse_frame(
        orjson.dumps(
            {
                "type": "send",
                "requestId": "r1",
                "id": "chat-9",
                "trigger": "submit-message",
                "messages": [user("yo")],
                "headers": {},
                "body": {"model": "gpt-4.1", "temperature": 0.1},
                "metadata": None,
            }
        ),
        LIMITS,
    )
    assert isinstance(send, aisdk_ws.Send)
    assert send.chat.model == "gpt-4.1" and send.chat.params == {"temperature": 0.1}
    assert send.request.chat_id == "chat-9"
    resume = aisdk_ws.parse_frame('{"type":"resume","requestId":"r2","id":"chat-9","headers":{},"body":{}}', LIMITS)
    assert resume == aisdk_ws.Resume("r2", "chat-9", None)
    assert aisdk_ws.parse_frame('{"type":"abort","requestId":"r3"}', LIMITS) == aisdk_ws.Abort("r3")
    with pytest.raises(GatewayError) as info:
        aisdk_ws.parse_frame('{"type":"resume","requestId":"r4","id":"c","lastSequence":-2}', LIMITS)
    assert info.value.extra["requestId"] == "r4"


def test_chunk_frames_count_from_zero_and_a_resume_skips_what_was_seen() -> None:
    gen, live = _generation()
    framer = aisdk_ws.ChunkFramer("r1", "m")
    frames = [orjson.loads(f) for e in live for f in framer.encode(*e)]
    assert frames[-1] == {"type": "end", "requestId": "r1"}
    chunk_frames = frames[:-1]
    assert [f["sequence"] for f in chunk_frames] == list(range(len(chunk_frames)))
    assert {f["requestId"] for f in frames} == {"r1"}
    again = aisdk_ws.ChunkFramer("r2", "m", skip_through=4)
    tail = [orjson.loads(f) for rest in gen.after(-1) for f in again.encode(rest, 0, None)]
    assert [f["sequence"] for f in tail[:-1]] == list(range(5, len(chunk_frames)))
    assert [f["chunk"] for f in tail[:-1]] == [f["chunk"] for f in chunk_frames[5:]]


def test_reply_frames() -> None:
    assert orjson.loads(aisdk_ws.reply("no-active", "r")) == {"type": "no-active", "requestId": "r"}
    err = orjson.loads(aisdk_ws.reply("error", "r", GatewayError("unknown_model", "no such model")))
    assert err == {"type": "error", "requestId": "r", "errorText": "no such model (unknown_model)"}
