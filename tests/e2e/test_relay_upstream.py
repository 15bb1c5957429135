"""The gateway relaying a real OpenAI-compatible upstream over HTTP (``tokenwire simulate``)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import pytest
from eventually import aeventually
from paths import FIXTURES
from wsutil import WS, text_of

from tokenwire.simulate.reply import reply_tokens


@pytest.fixture
def replay_relay(spawn, tmp_path):
    sim = spawn("simulate", "--port", "0", "--fixtures", str(FIXTURES))
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={
            "OPENAI_API_KEY": "sk-secret-provider-key",
            "OPENAI_BASE_URL": sim.http + "/v1",
            "TOKENWIRE_DB": str(tmp_path / "r.db"),
        },
    )
    return sim, gw


def gateway_on(spawn, sim, **settings: str):
    """A gateway relaying to the fake upstream ``sim``, with TOKENWIRE_<NAME> settings."""
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": sim.http + "/v1", "TOKENWIRE_DB": ":memory:"}
    env.update({f"TOKENWIRE_{k.upper()}": v for k, v in settings.items()})
    return spawn("serve", "--port", "0", env=env)


async def sim_stats(sim) -> dict:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/stats") as r:
        return await r.json()


async def sim_requests(sim) -> list[dict]:
    async with aiohttp.ClientSession() as s, s.get(sim.http + "/_sim/requests") as r:
        return await r.json()


def fixture_text(name: str, key: str = "content") -> str:
    out = []
    for line in (FIXTURES / name).read_text().split("\n"):
        if line.startswith("data:") and "[DONE]" not in line:
            for choice in json.loads(line[5:]).get("choices") or []:
                out.append((choice.get("delta") or {}).get(key) or "")
    return "".join(out)


@pytest.mark.parametrize(
    "name",
    [
        "openai-chat-basic.sse",
        "openai-chat-usage.sse",
        "openai-chat-toolcalls.sse",
        "deepseek-reasoning.sse",
        "vllm-openai.sse",
    ],
)
@pytest.mark.parametrize("split", [0, 7])
async def test_recorded_streams_through_the_gateway(replay_relay, name, split) -> None:
    _, gw = replay_relay
    model = f"m@replay={name}" + (f"@split={split}" if split else "")
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "r", "model": model, "messages": [{"role": "user", "content": "x"}]})
        events = await ws.until_end("r")
    assert text_of(events) == fixture_text(name)
    reasoning = "".join(e["content"] for e in events if e["type"] == "reasoning")
    assert reasoning == fixture_text(name, "reasoning_content")
    assert [e["seq"] for e in events] == list(range(len(events)))
    end = events[-1]
    assert end["status"] == "completed"
    if name == "openai-chat-usage.sse":
        assert end["usage"]["prompt_tokens"] == 14 and "usage_estimated" not in end
    if name == "openai-chat-toolcalls.sse":
        calls = [e["delta"] for e in events if e["type"] == "tool_call"]
        assert {c.get("name") for c in calls} >= {"get_current_weather"} and end["finish_reason"] == "tool_calls"


async def test_recorded_429_keeps_status_and_message(replay_relay) -> None:
    _, gw = replay_relay
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "e", "model": "m@replay=openai-error-429.json@status=429", "content": "x"})
        events = await ws.until_end("e")
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_rate_limited" and err["upstream_status"] == 429 and err["retryable"] is True
    assert "10KTPM-200RPM" in err["message"] and err["provider"] == "openai"
    assert events[-1]["status"] == "failed"


async def test_usage_requested_and_history_sent(relay, sim) -> None:
    async with await WS.connect(relay.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "u",
                "model": "gpt-4.1@tps=0",
                "content": "hi",
                "system": "Be brief",
                "params": {"max_tokens": 5, "temperature": 0.2},
            }
        )
        end = (await ws.until_end("u"))[-1]
    (body,) = await sim_requests(sim)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2 and body["max_tokens"] == 5 and body["model"] == "gpt-4.1@tps=0"
    assert body["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"}]
    assert end["usage"]["completion_tokens"] == 5 and "usage_estimated" not in end


@pytest.mark.parametrize(
    ("fault", "code", "status", "retryable"),
    [
        ("429@retry_after=7", "upstream_rate_limited", 429, True),
        ("500", "upstream_error", 500, True),
        ("503", "upstream_error", 503, True),
    ],
)
async def test_http_errors_from_upstream(relay, fault, code, status, retryable) -> None:
    async with await WS.connect(relay.ws) as ws:
        await ws.send({"type": "chat", "id": "f", "model": f"gpt-4.1@fault={fault}", "content": "x"})
        events = await ws.until_end("f")
        await ws.send({"type": "ping"})
        assert (await ws.recv())["type"] == "pong"  # socket alive
    err = next(e for e in events if e["type"] == "error")
    assert (err["code"], err["upstream_status"], err["retryable"]) == (code, status, retryable)
    assert "sk-secret-provider-key" not in json.dumps(events)
    if status == 429:
        assert err["retry_after"] == 7 and "Rate limit reached" in err["message"]
    assert [e["type"] for e in events] == ["start", "error", "end"] and events[-1]["status"] == "failed"


@pytest.mark.parametrize(
    ("fault", "code"),
    [("cut:5", "upstream_error"), ("malformed:5", "upstream_bad_response"), ("error:5", "upstream_error")],
)
async def test_mid_stream_faults_keep_partial_text(relay, fault, code) -> None:
    async with await WS.connect(relay.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "f",
                "model": f"gpt-4.1@fault={fault}@tps=200",
                "content": "partial",
                "conversation_id": "conv-fault",
            }
        )
        events = await ws.until_end("f")
    assert text_of(events) == "".join(reply_tokens([{"role": "user", "content": "partial"}])[:5])
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == code and err["retryable"] is True
    end = events[-1]
    assert end["status"] == "failed" and end["usage"]["completion_tokens"] == 5
    assert end["error"] == {"code": code, "retryable": True}


async def test_stall_hits_read_timeout(spawn, sim, tmp_path) -> None:
    gw = gateway_on(spawn, sim, read_timeout="0.5")
    async with await WS.connect(gw.ws) as ws:
        t0 = time.monotonic()
        await ws.send({"type": "chat", "id": "s", "model": "gpt-4.1@fault=stall:3@tps=100", "content": "x"})
        events = await ws.until_end("s", timeout=10)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 2.5, elapsed  # read_timeout, plus at most a watchdog tick and start-up
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_timeout" and err["retryable"] is True
    assert "sent nothing for 0.5 s" in err["message"]
    assert text_of(events) and events[-1]["status"] == "failed"


async def test_a_paused_generation_is_not_a_silent_provider(spawn, sim) -> None:
    """While the client holds a generation paused, the upstream is not read: no read timeout."""
    gw = gateway_on(spawn, sim, read_timeout="0.5")
    prompt = "hold on"
    async with await WS.connect(gw.ws) as ws:
        await ws.send(
            {"type": "chat", "id": "p", "model": "gpt-4.1@tps=50", "content": prompt, "params": {"max_tokens": 30}}
        )
        events = [await ws.recv()]
        while events[-1]["type"] != "token":
            events.append(await ws.recv())
        await ws.send({"type": "pause", "id": "p"})
        # Stays a sleep: holding the pause is the behaviour under test: 1.5 s is three read timeouts (3x).
        await asyncio.sleep(1.5)
        await ws.send({"type": "resume", "id": "p"})
        events += await ws.until_end("p", timeout=10)
    assert not [e for e in events if e["type"] == "error"]
    assert events[-1]["status"] == "completed"
    assert text_of(events) == "".join(reply_tokens([{"role": "user", "content": prompt}])[:30])


async def test_unreachable_upstream(spawn) -> None:
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "TOKENWIRE_DB": ":memory:"},
    )
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "x", "model": "gpt-4.1", "content": "x"})
        events = await ws.until_end("x")
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_unavailable" and err["retryable"] is True and "127.0.0.1:9" in err["message"]


async def _abort_delay(sim, before: dict, t_action: float) -> float:
    """How long after ``t_action`` the upstream saw its connection close (it records the moment itself)."""

    async def aborted() -> dict | None:
        stats = await sim_stats(sim)
        return stats if stats["aborted"] > before["aborted"] else None

    stats = await aeventually(aborted, message="the upstream never saw its connection close")
    return stats["last_abort_monotonic"] - t_action


async def test_cancel_closes_upstream_within_100ms(relay, sim) -> None:
    async with await WS.connect(relay.ws) as ws:
        await ws.send({"type": "chat", "id": "c", "model": "gpt-4.1@tps=50@tokens=1000", "content": "x"})
        while (await ws.recv())["type"] != "token":
            pass
        before = await sim_stats(sim)
        assert before["active"] == 1
        t = time.monotonic()
        await ws.send({"type": "cancel", "id": "c"})
        delay = await _abort_delay(sim, before, t)
        events = await ws.until_end("c")
    assert events[-1]["status"] == "cancelled"
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after cancel"


async def test_client_disconnect_closes_upstream_within_100ms(relay, sim) -> None:
    ws = await WS.connect(relay.ws)
    await ws.send({"type": "chat", "id": "c", "model": "gpt-4.1@tps=50@tokens=1000", "content": "x"})
    while (await ws.recv())["type"] != "token":
        pass
    before = await sim_stats(sim)
    t = time.monotonic()
    await ws.close()
    delay = await _abort_delay(sim, before, t)
    assert delay < 0.1, f"upstream closed {delay * 1000:.1f} ms after the client left"


async def test_pause_stops_reading_upstream(relay, sim) -> None:
    """While paused, the gateway reads nothing more; the provider is held back by TCP."""
    async with await WS.connect(relay.ws) as ws:
        await ws.send({"type": "chat", "id": "p", "model": "gpt-4.1@tps=0@tokens=200000@batch=50", "content": "x"})
        events = []
        while len(events) < 20:
            events.append(await ws.recv())
        await ws.send({"type": "pause"})
        while True:  # what was in flight, then silence (0.5 s without a frame)
            try:
                events.append(await ws.recv(timeout=0.5))
            except TimeoutError:
                break
        held = len(events)
        stats = await sim_stats(sim)
        assert stats["active"] == 1 and stats["completed"] == 0, "provider blocked, not finished"
        assert held < 100_000, f"{held} events arrived while paused"
        await ws.send({"type": "resume"})
        events += await ws.until_end("p", timeout=60)
    tokens = [e for e in events if e["type"] == "token"]
    assert len(tokens) == 200_000 and [e["seq"] for e in tokens[:5]] == [1, 2, 3, 4, 5]
    assert all(b["seq"] == a["seq"] + 1 for a, b in itertools.pairwise(tokens))


async def test_no_first_token_limit_still_bounds_a_silent_provider(spawn, sim) -> None:
    """first_token_timeout = 0 (no limit) must not let a provider that never answers hang a turn."""
    gw = gateway_on(spawn, sim, first_token_timeout="0", read_timeout="0.5", max_retries="0")
    async with await WS.connect(gw.ws) as ws:
        t0 = time.monotonic()
        await ws.send({"type": "chat", "id": "s", "model": "gpt-4.1@fault=stall:0", "content": "x"})
        events = await ws.until_end("s", timeout=10)
    assert time.monotonic() - t0 < 3
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_timeout" and not text_of(events)
