"""The pure frame parser and the per-generation state machine (no I/O)."""

from __future__ import annotations

import orjson
import pytest

from tokenwire.protocol import frames as fr
from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.stream import Generation, StreamExpired, id_prefix

LIMITS = fr.Limits(max_frame_bytes=2048, max_messages=3)


def parse(obj: object) -> fr.Request:
    return fr.parse_frame(orjson.dumps(obj).decode() if not isinstance(obj, str) else obj, LIMITS, 7)


def test_v1_chat_fields() -> None:
    chat = parse(
        {
            "type": "chat",
            "id": "c1",
            "model": "m",
            "content": "hi",
            "system": "s",
            "conversation_id": "conv",
            "params": {"temperature": 0.5, "max_tokens": 10},
            "stream_id": "abcdef0123456789",
        }
    )
    assert isinstance(chat, fr.Chat) and chat.dialect == "v1"
    assert (chat.id, chat.model, chat.content, chat.system, chat.conversation_id) == ("c1", "m", "hi", "s", "conv")
    assert chat.params == {"temperature": 0.5, "max_tokens": 10} and chat.stream_id == "abcdef0123456789"


def test_dialects_without_type() -> None:
    seed2 = parse({"content": "x", "system": "y"})
    assert isinstance(seed2, fr.Chat) and seed2.dialect == "seed" and seed2.id == "g7"
    seed0 = parse({"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 5})
    assert isinstance(seed0, fr.Chat) and seed0.dialect == "openai" and seed0.params == {"max_tokens": 5}


def test_control_frames() -> None:
    assert parse({"type": "cancel", "id": "a"}) == fr.Cancel("a")
    assert parse({"type": "pause"}) == fr.Pause(None)
    assert parse({"type": "resume", "id": "a"}) == fr.Resume("a")
    assert parse({"type": "ping", "data": 3}) == fr.Ping(3)
    att = parse({"type": "attach", "id": "a", "stream_id": "s_0123456789", "last_seq": 4})
    assert att == fr.Attach("a", "s_0123456789", 4)


@pytest.mark.parametrize(
    ("frame", "code", "needle"),
    [
        ("x" * 3000, "frame_too_large", "2048"),
        ("{", "invalid_json", "JSON"),
        ("null", "bad_request", "object"),
        ({"type": "chat", "id": "bad id!", "content": "x"}, "bad_request", "id"),
        ({"type": "chat", "content": "x", "messages": [{"role": "user", "content": "y"}]}, "bad_request", "not both"),
        ({"type": "chat", "messages": []}, "bad_request", "empty"),
        ({"type": "chat", "messages": [{"role": "user", "content": "a"}] * 4}, "bad_request", "limit is 3"),
        ({"type": "chat", "messages": [{"role": "user"}]}, "bad_request", "missing"),
        ({"type": "chat", "messages": [{"role": "user", "content": 5}]}, "bad_request", "string or a list"),
        ({"type": "chat", "content": "x", "params": []}, "bad_request", "object"),
        ({"type": "chat", "content": "x", "params": {"max_tokens": 0}}, "bad_request", "at least 1"),
        ({"type": "chat", "content": "x", "params": {"max_tokens": True}}, "bad_request", "wrong type"),
        ({"type": "chat", "content": "x", "params": {"temperature": 9}}, "bad_request", "between 0 and 2"),
        ({"type": "chat", "content": "x", "params": {"top_p": 1.5}}, "bad_request", "between 0 and 1"),
        ({"type": "chat", "content": "x", "params": {"top_p": -1}}, "bad_request", "between 0 and 1"),
        ({"type": "chat", "content": "x", "params": {"presence_penalty": 1e11}}, "bad_request", "between -2 and 2"),
        ({"type": "chat", "content": "x", "params": {"tool_choice": "x"}}, "bad_request", '"required"'),
        ({"type": "chat", "content": "x", "params": {"tool_choice": {}}}, "bad_request", '"type"'),
        (
            {"type": "chat", "content": "x", "params": {"tool_choice": {"type": "function", "function": "x"}}},
            "bad_request",
            "function.name",
        ),
        (
            {"type": "chat", "messages": [{"role": "assistant", "content": None, "tool_calls": "x"}]},
            "bad_request",
            "tool_calls must be a list",
        ),
        (
            {"type": "chat", "messages": [{"role": "assistant", "content": None, "tool_calls": [1]}]},
            "bad_request",
            "tool_calls[0] must be an object",
        ),
        (
            {"type": "chat", "messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": "x"}]}]},
            "bad_request",
            "tool_calls[0].function must be",
        ),
        (
            {
                "type": "chat",
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}
                ],
            },
            "bad_request",
            "function.arguments must be a string",
        ),
        (
            {
                "type": "chat",
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [{"id": 1, "function": {"name": "f"}}]}
                ],
            },
            "bad_request",
            "tool_calls[0].id must be a string",
        ),
        (
            {"type": "chat", "messages": [{"role": "tool", "content": "r", "tool_call_id": 5}]},
            "bad_request",
            "tool_call_id must be a string",
        ),
        (
            {"type": "chat", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 1}]}]},
            "bad_request",
            "image_url must be an object",
        ),
        (
            {
                "type": "chat",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 1}}]}],
            },
            "bad_request",
            "image_url must be an object",
        ),
        ({"type": "chat", "content": "x", "stream_id": "short"}, "bad_request", "stream_id"),
        ({"type": "chat", "content": "x", "model": ""}, "bad_request", "model"),
        ({"type": "attach", "id": "a"}, "bad_request", "stream_id"),
        ({"type": "attach", "id": "a", "stream_id": "s_0123456789", "last_seq": "3"}, "bad_request", "last_seq"),
        ({"type": "pause", "id": 5}, "bad_request", "id"),
        ({"type": "teleport"}, "unknown_type", "teleport"),
        ("[" * 5000 + "]" * 5000, "frame_too_large", "limit"),
    ],
)
def test_parse_errors(frame: object, code: str, needle: str) -> None:
    with pytest.raises(GatewayError) as exc:
        parse(frame)
    assert exc.value.code == code and needle in exc.value.message


def test_deep_nesting_is_invalid_json_not_a_crash() -> None:
    deep = "[" * 1500 + "]" * 1500
    with pytest.raises(GatewayError) as exc:
        fr.parse_frame(deep, fr.Limits(max_frame_bytes=10_000), 0)
    assert exc.value.code == "invalid_json"


def test_generation_seq_log_and_replay() -> None:
    gen = Generation("s_test")
    frames = [
        gen.start({"model": "m"}),
        gen.token("Hel"),
        gen.token('lo "x"'),
        gen.reasoning("hm"),
        gen.end("completed", {"finish_reason": "stop"}),
    ]
    decoded = [orjson.loads(id_prefix("c9") + f) for f in frames]
    assert [d["seq"] for d in decoded] == [0, 1, 2, 3, 4]
    assert [d["type"] for d in decoded] == ["start", "token", "token", "reasoning", "end"]
    assert all(d["id"] == "c9" for d in decoded)
    assert decoded[2]["content"] == 'lo "x"' and gen.answer == 'Hello "x"' and gen.ended
    assert gen.after(1) == frames[2:] and gen.after(-1) == frames and gen.after(4) == []
    with pytest.raises(StreamExpired):
        gen.after(9)


def test_generation_log_is_bounded_and_refuses_gaps() -> None:
    gen = Generation("s_bounded", max_log=10)
    gen.start({})
    for i in range(50):
        gen.token(str(i))
    assert len(gen.log) == 10 and gen.first_seq == 41
    assert [orjson.loads(b"{" + r)["seq"] for r in gen.after(45)] == [46, 47, 48, 49, 50]
    with pytest.raises(StreamExpired) as exc:
        gen.after(20)
    assert exc.value.code == "stream_expired" and "no longer kept" in exc.value.message


def test_valid_tool_turns_and_choices_pass_unchanged() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert fr.validate_messages(messages, fr.Limits()) is messages
    for choice in ("auto", "none", "required", {"type": "function", "function": {"name": "f"}}, {"type": "tool"}):
        assert fr.validate_params({"tool_choice": choice, "top_p": 1, "frequency_penalty": -2}) == {
            "tool_choice": choice,
            "top_p": 1,
            "frequency_penalty": -2,
        }
