"""The official ``anthropic`` SDK against the gateway's Messages API, changing only ``base_url``.

Against the zero-config gateway (simulated models), against a gateway relaying to the
fake upstream in each provider wire format (OpenAI, Anthropic, Gemini), and against the
recorded provider streams replayed byte for byte: the SDK's accumulated message has the
recording's text, thinking and tool-call input, whichever wire the answer came over.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anthropic
import pytest
from procs import Proc, start
from secutil import create_key
from test_providers_http import native_config

from tokenwire.simulate.reply import estimate_tokens, reasoning_tokens, reply_tokens

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "sse"


def expected(messages: list[dict], n: int | None = None) -> str:
    return "".join(reply_tokens(messages, n))


def final_parts(message) -> tuple[str, str, list[tuple[str, str, object]]]:
    """(text, thinking, [(tool id, name, input)]) of an SDK Message."""
    text = "".join(b.text for b in message.content if b.type == "text")
    thinking = "".join(b.thinking for b in message.content if b.type == "thinking")
    tools = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    return text, thinking, tools


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[tuple[Proc, Proc]]:
    """The fake upstream (with the recordings) and a gateway with one provider per wire format on it."""
    tmp = tmp_path_factory.mktemp("anthropic_sdk")
    sim = start(["simulate", "--port", "0", "--fixtures", str(FIXTURES)], cwd=tmp)
    config = tmp / "gw.toml"
    config.write_text(native_config(sim))
    gw = start(["serve", "--port", "0", "--config", str(config)], env={"TOKENWIRE_DB": ":memory:"}, cwd=tmp)
    try:
        yield sim, gw
    finally:
        for proc in (gw, sim):
            proc.stop()
            print(f"--- output of tokenwire process {proc.pid} ---\n" + "\n".join(proc.text().splitlines()[-40:]))


def client_for(gw: Proc, **kwargs) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", "unused")
    return anthropic.Anthropic(base_url=gw.http, max_retries=0, timeout=20, **kwargs)


async def get_json(url: str):
    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
        return await r.json()


# -- (a) the zero-config gateway ----------------------------------------------------------


def test_create_and_stream_against_the_simulated_models(gateway) -> None:
    prompt = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hello there"}]
    with client_for(gateway) as client:
        reply = client.messages.create(
            model="claude-sonnet-4.5",
            max_tokens=12,
            system="Be brief",
            messages=[{"role": "user", "content": "hello there"}],
        )
        assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
        assert reply.model == "claude-sonnet-4.5" and reply.stop_reason == "end_turn"
        assert final_parts(reply) == (expected(prompt, 12), "", [])
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (estimate_tokens(prompt), 12)
        assert reply.model_extra["tokenwire"]["cost_usd"] > 0  # tokenwire's cost, as the OpenAI path gives it
        assert reply.model_extra["tokenwire"]["provider"] == "simulated"

        with client.messages.stream(
            model="gpt-4.1",
            max_tokens=9,
            system=[{"type": "text", "text": "Be brief"}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        ) as stream:
            events = list(stream)
            message = stream.get_final_message()
        kinds = [event.type for event in events]
        text_deltas = [k for k in kinds if k == "text"]
        (delta,) = [e for e in events if e.type == "message_delta"]
        assert delta.model_extra["tokenwire"]["cost_usd"] > 0  # the cost rides on the streamed message_delta
    assert len(text_deltas) == 9
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final_parts(message) == (expected(prompt, 9), "", [])
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 9
    assert message.usage.input_tokens == estimate_tokens(prompt)


async def test_messages_without_the_v1_prefix_and_count_tokens(gateway) -> None:
    body = {"model": "gpt-4.1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.http + "/messages", json=body, headers={"anthropic-version": "2023-06-01"}) as r:
            assert r.status == 200
            reply = await r.json()
        async with s.post(gateway.http + "/v1/messages/count_tokens", json={**body, "max_tokens": None}) as r:
            assert r.status == 400  # max_tokens, when given, must be valid
        count_body = {"model": "gpt-4.1", "messages": body["messages"]}
        async with s.post(gateway.http + "/v1/messages/count_tokens", json=count_body) as r:
            assert r.status == 200
            count = await r.json()
        async with s.post(gateway.http + "/v1/messages/count_tokens", json={**count_body, "model": "nope"}) as r:
            assert r.status == 404  # an unknown model, as for a message
            assert (await r.json())["error"]["type"] == "not_found_error"
    assert reply["content"] == [{"type": "text", "text": expected([{"role": "user", "content": "hi"}], 5)}]
    assert count == {"input_tokens": estimate_tokens(body["messages"])}


def test_models_list_in_anthropic_shape(gateway) -> None:
    with client_for(gateway) as client:
        page = client.models.list()
        models = list(page)
    assert {m.id for m in models} == {"gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"}
    assert all(m.type == "model" and m.display_name == m.id and m.max_input_tokens for m in models)
    assert page.has_more is False and page.last_id == models[-1].id

    with client_for(gateway) as client:
        first = client.models.list(limit=2)
        assert [m.id for m in first.data] == [m.id for m in models[:2]] and first.has_more is True
        assert [m.id for m in client.models.list(limit=3)] == [m.id for m in models]  # auto-paging: every model once
        with pytest.raises(anthropic.BadRequestError):
            client.models.list(limit=0)


def test_bad_requests_are_bad_request_errors_naming_the_field(gateway) -> None:
    with client_for(gateway) as client:
        with pytest.raises(anthropic.BadRequestError) as exc:
            # the 2.x SDK has no temperature argument; other clients send it, and tokenwire checks it
            client.messages.create(
                model="gpt-4.1",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
                extra_body={"temperature": 1.5},
            )
        assert '"temperature"' in exc.value.message
        assert exc.value.body == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": '"temperature" must be a number between 0 and 1'},
        }
        with pytest.raises(anthropic.BadRequestError) as exc:
            client.messages.create(
                model="gpt-4.1",
                max_tokens=5,
                messages=[{"role": "user", "content": [{"type": "document", "source": {"type": "text"}}]}],
            )
        assert '"messages[0].content[0]"' in exc.value.message and "not supported" in exc.value.message
        with pytest.raises(anthropic.NotFoundError) as exc:
            client.messages.create(model="gpt-9", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert exc.value.body["error"]["type"] == "not_found_error" and "unknown model" in exc.value.message


def test_keys_as_x_api_key_or_bearer(spawn, tmp_path) -> None:
    db = tmp_path / "keys.db"
    alice, bob = create_key(db, "alice"), create_key(db, "bob", "--models", "gpt-*")
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "50"})
    args = {"model": "claude-sonnet-4.5", "max_tokens": 4, "messages": [{"role": "user", "content": "k"}]}
    with client_for(gw, api_key=alice) as client:  # the SDK sends x-api-key
        assert client.messages.create(**args).usage.output_tokens == 4
    with anthropic.Anthropic(base_url=gw.http, auth_token=alice, max_retries=0, timeout=20) as client:
        assert client.messages.create(**args).usage.output_tokens == 4  # Authorization: Bearer
    with client_for(gw, api_key="tw_wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as exc:
            client.messages.create(**args)
        assert exc.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError), client.messages.stream(**args) as stream:
            stream.get_final_message()
    with client_for(gw, api_key=bob) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as exc:
            client.messages.create(**args)
        assert exc.value.body["error"]["type"] == "permission_error"


# -- (b) every provider wire format -------------------------------------------------------

WIRES = [("gpt-4.1", "oai"), ("claude-sonnet-4.5", "claude"), ("gemini-2.5-flash", "gem")]


@pytest.mark.parametrize(("model", "provider"), WIRES)
def test_every_wire_format_streamed_and_whole(fleet, model, provider) -> None:
    _, gw = fleet
    messages = [{"role": "user", "content": "relay this"}]
    with client_for(gw) as client:
        whole = client.messages.create(model=model + "@tps=0", max_tokens=10, messages=messages)
        with client.messages.stream(model=model + "@tps=0@reasoning=4", max_tokens=10, messages=messages) as s:
            streamed = s.get_final_message()
    assert final_parts(whole) == (expected(messages, 10), "", [])
    assert whole.model_extra["tokenwire"]["provider"] == provider
    assert whole.usage.output_tokens == 10 and whole.usage.input_tokens == estimate_tokens(messages)
    # thinking first (its own block), then the answer, whichever wire carried them
    assert [b.type for b in streamed.content] == ["thinking", "text"]
    assert final_parts(streamed) == (expected(messages, 10), "".join(reasoning_tokens(4)), [])
    assert streamed.usage.output_tokens >= 10


@pytest.mark.parametrize(("model", "provider"), WIRES)
async def test_tools_and_options_reach_each_upstream_in_its_shape(fleet, model, provider) -> None:
    sim, gw = fleet
    tool = {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    async with anthropic.AsyncAnthropic(base_url=gw.http, api_key="unused", max_retries=0, timeout=20) as client:
        await client.messages.create(
            model=model + "@tps=0",
            max_tokens=6,
            system="sys",
            messages=history,
            tools=[tool],
            tool_choice={"type": "auto"},
            stop_sequences=["ZZZ"],
            extra_body={"temperature": 0.25},
        )
    body = (await get_json(sim.http + "/_sim/requests"))[-1]
    if provider == "oai":
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": tool["input_schema"],
                    "description": tool["description"],
                },
            }
        ]
        assert body["stop"] == ["ZZZ"] and body["temperature"] == 0.25 and body["tool_choice"] == "auto"
        assert body["messages"][0] == {"role": "system", "content": "sys"}
        assert body["messages"][2]["tool_calls"][0]["id"] == "toolu_1"
        assert body["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    elif provider == "claude":
        assert body["tools"] == [tool] and body["system"] == "sys" and body["stop_sequences"] == ["ZZZ"]
        assert body["messages"][1]["content"] == [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
        ]
        assert body["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]
    else:
        decl = body["tools"][0]["functionDeclarations"][0]
        assert decl["name"] == "get_weather" and body["systemInstruction"] == {"parts": [{"text": "sys"}]}
        assert body["generationConfig"]["stopSequences"] == ["ZZZ"]


# -- (c) the recorded streams ---------------------------------------------------------------


def _data(name: str) -> list[dict]:
    out = []
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(json.loads(line[5:]))
    return out


def recorded(name: str) -> tuple[str, str, list[tuple[str, str, object]]]:
    """(text, thinking, [(tool id, name, input)]) the recording carries, read from its own format."""
    text, thinking = [], []
    tools: dict[int, list] = {}
    if name.startswith("anthropic"):
        for obj in _data(name):
            if obj["type"] == "content_block_start" and obj["content_block"]["type"] == "tool_use":
                block = obj["content_block"]
                tools[obj["index"]] = [block["id"], block["name"], ""]
            elif obj["type"] == "content_block_delta":
                delta = obj["delta"]
                text.append(delta.get("text", "") if delta["type"] == "text_delta" else "")
                thinking.append(delta.get("thinking", "") if delta["type"] == "thinking_delta" else "")
                if delta["type"] == "input_json_delta":
                    tools[obj["index"]][2] += delta["partial_json"]
    elif name.startswith("gemini"):
        for obj in _data(name):
            for part in obj["candidates"][0]["content"]["parts"]:
                (thinking if part.get("thought") else text).append(part.get("text", ""))
    else:
        for obj in _data(name):
            for choice in obj.get("choices") or []:
                delta = choice.get("delta") or {}
                text.append(delta.get("content") or "")
                thinking.append(delta.get("reasoning_content") or "")
                for call in delta.get("tool_calls") or []:
                    entry = tools.setdefault(call["index"], ["", "", ""])
                    entry[0] = call.get("id") or entry[0]
                    fn = call.get("function") or {}
                    entry[1] += fn.get("name") or ""
                    entry[2] += fn.get("arguments") or ""
    calls = [(i, n, json.loads(a or "{}")) for _, (i, n, a) in sorted(tools.items())]
    return "".join(text), "".join(thinking), calls


REPLAYS = [
    ("anthropic-messages-basic.sse", "claude-x", "end_turn"),
    ("anthropic-messages-tooluse.sse", "claude-x", "tool_use"),
    ("openai-chat-toolcalls.sse", "gpt-x", "tool_use"),
    ("deepseek-reasoning.sse", "deepseek-x", "end_turn"),
    ("gemini-stream.sse", "gemini-x", "end_turn"),
]


@pytest.mark.parametrize(("name", "model", "stop"), REPLAYS)
def test_recorded_streams_accumulate_to_the_recording(fleet, name, model, stop) -> None:
    _, gw = fleet
    want = recorded(name)
    assert want[0] or want[2], "a recording with neither text nor tool calls tests nothing"
    args = {"max_tokens": 1024, "messages": [{"role": "user", "content": "replay"}]}
    with client_for(gw) as client:
        with client.messages.stream(model=f"{model}@replay={name}@split=7", **args) as stream:
            streamed = stream.get_final_message()
        whole = client.messages.create(model=f"{model}@replay={name}", **args)
    for message in (streamed, whole):
        assert final_parts(message) == want
        assert message.stop_reason == stop
    if name == "anthropic-messages-tooluse.sse":
        assert [b.type for b in streamed.content] == ["text", "tool_use", "tool_use"]
        assert streamed.usage.input_tokens == 506  # the provider's own count, from the end of the run
    if name == "deepseek-reasoning.sse":
        assert [b.type for b in streamed.content] == ["thinking", "text"] and want[1]


# -- failures and cancellation --------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4.1@fault=error:3@tps=200", "claude-x@fault=cut:3@tps=200"])
def test_a_failure_after_output_began_raises_in_the_sdk(fleet, model) -> None:
    _, gw = fleet
    seen: list[str] = []
    t0 = time.monotonic()
    with client_for(gw) as client:
        with (
            pytest.raises(anthropic.APIStatusError) as exc,
            client.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "x"}]) as s,
        ):
            for text in s.text_stream:
                seen.append(text)
        assert time.monotonic() - t0 < 10
        assert "".join(seen) == "".join(reply_tokens([{"role": "user", "content": "x"}])[:3])
        assert exc.value.body["type"] == "error"
        assert exc.value.body["error"]["type"] in ("api_error", "overloaded_error")
        # not streamed: a cut-short reply is an error status, not a message passed off as whole
        with pytest.raises(anthropic.APIStatusError) as exc:
            client.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "x"}])
        assert exc.value.status_code >= 500 and exc.value.body["type"] == "error"


def test_a_refusal_before_output_is_an_http_status(fleet) -> None:
    _, gw = fleet
    with client_for(gw) as client, pytest.raises(anthropic.RateLimitError) as exc:
        with client.messages.stream(
            model="gpt-4.1@fault=429", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as s:
            s.get_final_message()
    assert exc.value.status_code == 429 and exc.value.body["error"]["type"] == "rate_limit_error"


async def _abort_delay(sim: Proc, before: dict, t_action: float) -> float:
    for _ in range(200):
        stats = await get_json(sim.http + "/_sim/stats")
        if stats["aborted"] > before["aborted"]:
            return stats["last_abort_monotonic"] - t_action
        await asyncio.sleep(0.01)
    raise AssertionError("the upstream never saw its connection close")


@pytest.mark.parametrize("model", ["gpt-4.1", "claude-x", "gemini-x"])
async def test_closing_the_stream_closes_upstream_within_100ms(fleet, model) -> None:
    sim, gw = fleet
    async with anthropic.AsyncAnthropic(base_url=gw.http, api_key="unused", max_retries=0, timeout=20) as client:
        stream = client.messages.stream(
            model=model + "@tps=50@tokens=1000", max_tokens=1000, messages=[{"role": "user", "content": "x"}]
        )
        async with stream as s:
            async for text in s.text_stream:
                if text:
                    break
            before = await get_json(sim.http + "/_sim/stats")
            assert before["active"] == 1
            t = time.monotonic()
        delay = await _abort_delay(sim, before, t)
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after the client closed the stream"
