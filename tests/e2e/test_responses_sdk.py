"""The real ``openai`` SDK's Responses API (``client.responses.*``) against tokenwire, changing only ``base_url``.

Zero-config gateway, a gateway relaying to the fake upstream in each wire format (OpenAI,
Anthropic, Gemini), recorded fixtures replayed through it, ``previous_response_id``,
background responses resumed with ``starting_after`` (same instance, another instance over
Redis, after the connection is cut), cancel within 100 ms, bad input, and API keys.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from parseref import anthropic_expected, gemini_expected
from test_cluster import cluster  # noqa: F401  (a fixture)
from test_providers_http import native_config, serve
from test_relay_upstream import fixture_text

from tokenwire.simulate.reply import reply_tokens

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "sse"


def expected(prompt: str, n: int, instructions: str | None = None) -> str:
    msgs = [{"role": "system", "content": instructions}] if instructions else []
    return "".join(reply_tokens([*msgs, {"role": "user", "content": prompt}], n))


def sdk(gw: Any, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.http + "/v1", api_key=key, max_retries=0, timeout=20)


async def sim_stats(sim: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/stats") as r:
        return await r.json()


async def sim_requests(sim: Any) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/requests") as r:
        return await r.json()


async def abort_delay(sim: Any, before: dict[str, Any], t_action: float) -> float:
    """How long after ``t_action`` the fake upstream saw its request closed."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = await sim_stats(sim)
        if stats["aborted"] > before["aborted"]:
            return stats["last_abort_monotonic"] - t_action
        await asyncio.sleep(0.01)
    raise AssertionError("the upstream never saw its connection close")


def assert_exactly_once(events: list[Any], text: str, last: str = "response.completed") -> None:
    seqs = [e.sequence_number for e in events]
    assert seqs == list(range(len(events))), f"every sequence number once, in order: {seqs[:50]}"
    assert events[0].type == "response.created" and events[-1].type == last, events[-1].type
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text


def same_items(output: list[Any]) -> list[dict[str, Any]]:
    """Output items without what differs between two responses (ids) or what only the typed stream adds."""
    out = []
    for item in output:
        d = item.model_dump(exclude={"id", "parsed_arguments"})
        for part in d.get("content") or []:
            part.pop("parsed", None)
        out.append(d)
    return out


async def collect(stream: Any) -> list[Any]:
    return [e async for e in stream]


# -- the zero-config gateway ---------------------------------------------------------


async def test_create_stream_and_stream_helper_on_the_zero_config_gateway(gateway) -> None:
    async with sdk(gateway) as c:
        whole = await c.responses.create(model="gpt-4.1", input="hello there", max_output_tokens=8)
        assert whole.object == "response" and whole.id.startswith("resp_") and whole.status == "completed"
        assert whole.output_text == expected("hello there", 8)
        assert (whole.usage.output_tokens, whole.usage.total_tokens) == (8, whole.usage.input_tokens + 8)
        assert whole.model == "gpt-4.1" and whole.store is True

        events = await collect(
            await c.responses.create(
                model="claude-sonnet-4.5",
                input="stream me",
                instructions="Be brief.",
                max_output_tokens=12,
                stream=True,
            )
        )
        assert_exactly_once(events, expected("stream me", 12, "Be brief."))
        kinds = [e.type for e in events]
        assert kinds[:4] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert kinds[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        done = events[-1].response
        assert done.instructions == "Be brief." and done.max_output_tokens == 12
        assert done.output[0].content[0].text == expected("stream me", 12, "Be brief.")

        async with c.responses.stream(model="gemini-2.5-flash", input="typed stream", max_output_tokens=10) as st:
            deltas = [e.delta async for e in st if e.type == "response.output_text.delta"]
            final = await st.get_final_response()
        assert "".join(deltas) == final.output_text == expected("typed stream", 10)

        again = await c.responses.retrieve(final.id)
        assert again.id == final.id and again.output_text == final.output_text and again.status == "completed"

        with pytest.raises(openai.NotFoundError):
            await c.responses.retrieve("resp_" + "0" * 32)
        with pytest.raises(openai.NotFoundError) as exc:
            await c.responses.create(model="gpt-9", input="x")
        assert "unknown model" in str(exc.value)


async def test_websocket_mode_response_create_frames(gateway) -> None:
    """``client.responses.connect()``: ``response.create`` frames in, each response's events out, in turn."""
    async with sdk(gateway) as c, c.responses.connect() as conn:
        await conn.response.create(model="gpt-4.1", input="over ws", instructions="Be brief.", max_output_tokens=6)
        first = []
        async for ev in conn:
            first.append(ev)
            if ev.type == "response.completed":
                break
        assert_exactly_once(first, expected("over ws", 6, "Be brief."))
        rid = first[-1].response.id
        await conn.response.create(model="gpt-4.1", input="x", temperature=9)  # refused: the socket stays open
        refused = await conn.recv()
        assert refused.type == "error" and refused.status == 400 and refused.error.param == "temperature"
        await conn.response.create(model="gpt-4.1", input="second", previous_response_id=rid, max_output_tokens=4)
        async for ev in conn:
            if ev.type == "response.completed":
                second = ev.response
                break
    assert second.previous_response_id == rid and second.output_text == expected("second", 4)
    async with sdk(gateway) as c:
        assert (await c.responses.retrieve(rid)).output_text == expected("over ws", 6, "Be brief.")


async def test_bad_input_is_a_400_naming_the_field(gateway) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "x", "extra_body": {"frequency_penalty": 1}}, "frequency_penalty"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "x", "temperature": 7}, "temperature"),
        ({"input": "x", "background": True, "store": False}, "background"),
        ({"input": "x", "previous_response_id": "resp_" + "1" * 32}, "previous_response_id"),
    ]
    async with sdk(gateway) as c:
        for kwargs, param in cases:
            with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as exc:
                await c.responses.create(model="gpt-4.1", **kwargs)
            body = exc.value.body
            assert isinstance(body, dict) and body["param"] == param, (param, body)
            assert param.split("[")[0] in body["message"] or param in body["message"], body
    # and never a traceback: a body that is not JSON at all
    async with aiohttp.ClientSession() as s, s.post(gateway.http + "/v1/responses", data=b"{nope") as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"


# -- relayed to the fake upstream, in each wire format ------------------------------


@pytest.fixture
def fsim(spawn):
    return spawn("simulate", "--port", "0", "--fixtures", str(FIXTURES))


@pytest.fixture
def native(spawn, tmp_path, fsim):
    """A gateway relaying gpt-*/deepseek-* over OpenAI's wire, claude-* over Anthropic's, gemini-* over Gemini's."""
    return serve(spawn, tmp_path, native_config(fsim))


async def test_every_wire_format_streams_through_the_sdk(native, fsim) -> None:
    async with sdk(native) as c:
        # at max_tokens the fake upstream reports "length" in Anthropic's wire, "stop" in OpenAI's and Gemini's
        ends = {"gpt-4.1@tps=0": "completed", "claude-x@tps=0": "incomplete", "gemini-x@tps=0": "completed"}
        for model, status in ends.items():
            events = await collect(
                await c.responses.create(model=model, input="across wires", max_output_tokens=9, stream=True)
            )
            assert_exactly_once(events, expected("across wires", 9), last="response." + status)
            assert events[-1].response.status == status, model
            if status == "incomplete":
                assert events[-1].response.incomplete_details.reason == "max_output_tokens", model
            async with c.responses.stream(model=model, input="typed", instructions="Be brief.") as st:
                final = await st.get_final_response()
            assert final.status == "completed" and final.output_text == expected("typed", 100, "Be brief."), model
    bodies = await sim_requests(fsim)
    claude = [b for b in bodies if "system" in b]
    assert claude and claude[-1]["system"] == "Be brief."


def _openai_tool_args(name: str) -> dict[int, str]:
    args: dict[int, str] = {}
    for line in (FIXTURES / name).read_text().split("\n"):
        if line.startswith("data:") and "[DONE]" not in line:
            for choice in json.loads(line[5:]).get("choices") or []:
                for call in (choice.get("delta") or {}).get("tool_calls") or []:
                    args[call["index"]] = args.get(call["index"], "") + (call.get("function") or {}).get(
                        "arguments", ""
                    )
    return args


async def test_recorded_fixtures_come_out_as_the_sdks_final_response(native) -> None:
    tool_args = _openai_tool_args("openai-chat-toolcalls.sse")
    a_text, a_thinking, a_args = anthropic_expected((FIXTURES / "anthropic-messages-tooluse.sse").read_bytes())
    g_text, _ = gemini_expected((FIXTURES / "gemini-stream.sse").read_bytes())
    cases = {
        "gpt-4.1@replay=openai-chat-toolcalls.sse": (
            fixture_text("openai-chat-toolcalls.sse"),
            "",
            [tool_args[i] for i in sorted(tool_args)],
        ),
        "deepseek-v3.2@replay=deepseek-reasoning.sse": (
            fixture_text("deepseek-reasoning.sse"),
            fixture_text("deepseek-reasoning.sse", "reasoning_content"),
            [],
        ),
        "claude-x@replay=anthropic-messages-tooluse.sse": (
            a_text,
            a_thinking,
            ["".join(a for i, a in a_args if i == idx) for idx in sorted({i for i, _ in a_args})],
        ),
        "gemini-x@replay=gemini-stream.sse": (g_text, "", []),
    }
    async with sdk(native) as c:
        for model, (text, reasoning, args) in cases.items():
            async with c.responses.stream(model=model, input="replay") as st:
                final = await st.get_final_response()
            assert final.status == "completed", model
            assert final.output_text == text, model
            got_reasoning = "".join(
                p.text for item in final.output if item.type == "reasoning" for p in item.content or []
            )
            assert got_reasoning == reasoning, model
            calls = [item for item in final.output if item.type == "function_call"]
            assert [call.arguments for call in calls] == args, model
            for call in calls:
                assert call.call_id and call.name and json.loads(call.arguments) is not None
            whole = await c.responses.create(model=model, input="replay")  # the same, not streamed
            assert same_items(whole.output) == same_items(final.output), model
    assert len(cases["gpt-4.1@replay=openai-chat-toolcalls.sse"][2]) >= 1
    assert cases["deepseek-v3.2@replay=deepseek-reasoning.sse"][1]


async def test_previous_response_id_continues_with_tools_and_outputs(native, fsim) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    async with sdk(native) as c:
        first = await c.responses.create(
            model="gpt-4.1@tps=0", input="first turn", instructions="Be brief.", tools=[tool], max_output_tokens=5
        )
        second = await c.responses.create(
            model="gpt-4.1@tps=0",
            previous_response_id=first.id,
            input=[
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "snow"},
                {"role": "user", "content": [{"type": "input_text", "text": "second turn"}]},
            ],
            max_output_tokens=5,
        )
        third = await c.responses.create(model="claude-x@tps=0", previous_response_id=second.id, input="third turn")
    assert second.previous_response_id == first.id and third.previous_response_id == second.id
    bodies = await sim_requests(fsim)
    assert bodies[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": tool["parameters"],
                "description": "Weather in a city",
            },
        }
    ]
    assert bodies[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert bodies[1]["messages"] == [  # the instructions are not carried over (as OpenAI does)
        {"role": "user", "content": "first turn"},
        {"role": "assistant", "content": first.output_text},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "snow"},
        {"role": "user", "content": "second turn"},
    ]
    texts = [m["content"] for m in bodies[2]["messages"]]
    assert texts[0] == [{"type": "text", "text": "first turn"}]  # Anthropic's shape, the whole history
    assert {"type": "text", "text": "third turn"} in texts[-1]


# -- background, resume, cancel --------------------------------------------------------


@pytest.fixture
def relay_sim(spawn, tmp_path):
    sim = spawn("simulate", "--port", "0")
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": str(tmp_path / "r.db")},
    )
    return gw, sim


async def test_an_upstream_refusal_before_any_output_is_its_http_status(relay_sim) -> None:
    gw, _ = relay_sim
    # one model name per call: each is its own deployment, so no circuit breaker opens in between
    async with sdk(gw) as c:
        with pytest.raises(openai.RateLimitError):
            await c.responses.create(model="gpt-4.1@fault=429@tokens=1", input="x")
        with pytest.raises(openai.RateLimitError):
            await c.responses.create(model="gpt-4.1@fault=429@tokens=2", input="x", stream=True)
        with pytest.raises(openai.RateLimitError):
            async with c.responses.stream(model="gpt-4.1@fault=429@tokens=3", input="x") as st:
                await st.get_final_response()


async def _raw_events(gw: Any, body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """POST a streamed background create and read ``n`` events, then cut the connection."""
    got: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.http + "/v1/responses", json=body)
        assert resp.status == 200
        buf = b""
        while len(got) < n:
            buf += await resp.content.readany()
            while b"\n\n" in buf and len(got) < n:
                block, buf = buf.split(b"\n\n", 1)
                got.append(orjson.loads(block.split(b"data: ", 1)[1]))
        resp.connection.transport.abort()  # cut mid-reply, no goodbye
        resp.close()
    return got


async def test_background_resume_exactly_once_on_the_same_instance(relay_sim) -> None:
    gw, _ = relay_sim
    prompt, n = "resume me", 120
    async with sdk(gw) as c:
        bg = await c.responses.create(model="gpt-4.1@tps=100", input=prompt, max_output_tokens=n, background=True)
        assert bg.status == "queued" and bg.background is True
        # the first part over one connection, then the rest from where it left off
        first: list[Any] = []
        stream = await c.responses.retrieve(bg.id, stream=True)
        async for e in stream:
            first.append(e)
            if len(first) == 20:
                break
        await stream.close()
        rest = await collect(await c.responses.retrieve(bg.id, stream=True, starting_after=first[-1].sequence_number))
        assert rest[0].sequence_number == 20
        assert_exactly_once(first + rest, expected(prompt, n))
        # the SDK's own resume: the whole stream, filtered client-side, into its typed accumulator
        async with c.responses.stream(response_id=bg.id, starting_after=10) as st:
            seen = [e async for e in st]
            final = await st.get_final_response()
        assert seen[0].sequence_number == 11 and final.output_text == expected(prompt, n)
        stored = await c.responses.retrieve(bg.id)
        assert stored.status == "completed" and stored.output_text == expected(prompt, n)


async def test_streamed_background_cut_mid_reply_then_resumed(relay_sim) -> None:
    gw, _ = relay_sim
    prompt, n = "cut me", 150
    body = {"model": "gpt-4.1@tps=100", "input": prompt, "max_output_tokens": n, "background": True, "stream": True}
    got = await _raw_events(gw, body, 25)
    rid = got[0]["response"]["id"]
    async with sdk(gw) as c:
        progress = await c.responses.retrieve(rid)
        assert progress.status in ("in_progress", "completed")
        rest = await collect(await c.responses.retrieve(rid, stream=True, starting_after=got[-1]["sequence_number"]))
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    typed = [TypeAdapter(ResponseStreamEvent).validate_python(e) for e in got]
    assert_exactly_once(typed + rest, expected(prompt, n))


async def test_cancel_closes_the_upstream_within_100ms(relay_sim) -> None:
    gw, sim = relay_sim
    async with sdk(gw) as c:
        bg = await c.responses.create(model="gpt-4.1@tps=50@tokens=1000", input="x", background=True)
        stream = await c.responses.retrieve(bg.id, stream=True)
        async for e in stream:
            if e.type == "response.output_text.delta":
                break
        await stream.close()
        before = await sim_stats(sim)
        assert before["active"] == 1
        t = time.monotonic()
        cancelled = await c.responses.cancel(bg.id)
        delay = await abort_delay(sim, before, t)
        assert cancelled.status == "cancelled" and cancelled.output_text
        assert (await c.responses.retrieve(bg.id)).status == "cancelled"
    print(f"cancel -> upstream closed: {delay * 1000:.1f} ms")
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after the cancel"


async def test_a_websocket_closed_mid_response_closes_the_upstream_within_100ms(relay_sim) -> None:
    gw, sim = relay_sim
    async with sdk(gw) as c:
        conn = await c.responses.connect().enter()
        await conn.response.create(model="gpt-4.1@tps=50@tokens=1000", input="x")
        async for ev in conn:
            if ev.type == "response.output_text.delta":
                break
        before = await sim_stats(sim)
        assert before["active"] == 1
        t = time.monotonic()
        await conn.close()
        delay = await abort_delay(sim, before, t)
    print(f"WebSocket closed -> upstream closed: {delay * 1000:.1f} ms")
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after the WebSocket closed"


# -- over Redis: another instance --------------------------------------------------------


async def test_resume_and_cancel_from_another_instance(cluster, sim) -> None:  # noqa: F811
    a, b = cluster(2)
    prompt, n = "resume me elsewhere", 150
    async with sdk(a) as ca, sdk(b) as cb:
        bg = await ca.responses.create(model="gpt-4.1@tps=100", input=prompt, max_output_tokens=n, background=True)
        first: list[Any] = []
        stream = await ca.responses.retrieve(bg.id, stream=True)
        async for e in stream:
            first.append(e)
            if len(first) == 30:
                break
        await stream.close()
        rest = await collect(await cb.responses.retrieve(bg.id, stream=True, starting_after=29))
        assert_exactly_once(first + rest, expected(prompt, n))
        whole_on_b = await collect(await cb.responses.retrieve(bg.id, stream=True))
        assert [e.model_dump() for e in whole_on_b[30:]] == [e.model_dump() for e in rest]
        assert (await cb.responses.retrieve(bg.id)).output_text == expected(prompt, n)
        # a continuation on B of a response made on A
        nxt = await cb.responses.create(model="gpt-4.1@tps=0", input="and then", previous_response_id=bg.id)
        assert nxt.status == "completed"

        long = await ca.responses.create(model="gpt-4.1@tps=50@tokens=2000", input="cancel me", background=True)
        stream = await cb.responses.retrieve(long.id, stream=True)
        async for e in stream:
            if e.type == "response.output_text.delta":
                break
        await stream.close()
        before = await sim_stats(sim)
        t = time.monotonic()
        cancelled = await cb.responses.cancel(long.id)
        delay = await abort_delay(sim, before, t)
        assert cancelled.status == "cancelled"
        assert (await ca.responses.retrieve(long.id)).status == "cancelled"
    print(f"cancel on another instance -> upstream closed: {delay * 1000:.1f} ms")
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after the cancel sent to another instance"
    bodies = await sim_requests(sim)
    assert bodies[1]["messages"][:2] == [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": expected(prompt, n)},
    ]


# -- API keys -----------------------------------------------------------------------------


async def test_a_foreign_key_can_neither_read_continue_resume_nor_cancel(spawn, tmp_path) -> None:
    from secutil import create_key

    db = tmp_path / "keys.db"
    alice, bob = create_key(db, "alice"), create_key(db, "bob")
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "1"})
    async with sdk(gw, alice) as ca, sdk(gw, bob) as cb:
        mine = await ca.responses.create(model="gpt-4.1", input="secret", background=True)
        with pytest.raises(openai.NotFoundError):
            await cb.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await collect(await cb.responses.retrieve(mine.id, stream=True))
        with pytest.raises(openai.NotFoundError):
            await cb.responses.cancel(mine.id)
        with pytest.raises(openai.NotFoundError) as exc:
            await cb.responses.create(model="gpt-4.1", input="x", previous_response_id=mine.id)
        assert exc.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            async with cb.responses.stream(response_id=mine.id) as st:
                await st.get_final_response()
        # still alice's, untouched
        async with ca.responses.stream(response_id=mine.id) as st:
            final = await st.get_final_response()
        assert final.status == "completed" and final.output_text
        with pytest.raises(openai.AuthenticationError):
            async with sdk(gw, "tw_nope") as cx:
                await cx.responses.retrieve(mine.id)
