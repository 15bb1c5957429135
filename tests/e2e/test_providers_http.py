"""Native providers, routing and cost over real HTTP: gateways configured by TOML in front of
fake upstreams (``tokenwire simulate``) that speak OpenAI, Anthropic and Gemini, with faults."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from eventually import aeventually
from parseref import anthropic_expected, gemini_expected
from paths import FIXTURES
from wsutil import WS, text_of

from tokenwire.simulate.reply import estimate_tokens, reply_tokens


def serve(spawn, tmp_path: Path, toml: str, name: str = "gw"):
    path = tmp_path / f"{name}.toml"
    path.write_text(toml)
    return spawn("serve", "--port", "0", "--config", str(path), env={"TOKENWIRE_DB": ":memory:"})


async def get_json(url: str):
    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
        return await r.json()


async def chat(gw, model: str, content: str = "hi", timeout: float = 20.0, **extra) -> list[dict]:
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "c", "model": model, "content": content, **extra})
        return await ws.until_end("c", timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fsim(spawn):
    return spawn("simulate", "--port", "0", "--fixtures", str(FIXTURES))


def native_config(sim, routing: str = "") -> str:
    return f"""
[routing]
max_retries = 1
retry_backoff = 0.05
{routing}

[providers.claude]
preset = "anthropic"
base_url = "{sim.http}/v1"
api_key = "sk-ant-test"
models = ["claude-*"]

[providers.gem]
preset = "gemini"
base_url = "{sim.http}/v1beta"
api_key = "gm-test"
models = ["gemini-*"]

[providers.oai]
preset = "openai"
base_url = "{sim.http}/v1"
api_key = "sk-test"
models = ["gpt-*", "deepseek-*"]
"""


@pytest.mark.parametrize("split", [0, 5])
@pytest.mark.parametrize(
    ("name", "model", "provider"),
    [
        ("anthropic-messages-basic.sse", "claude-x", "claude"),
        ("anthropic-messages-tooluse.sse", "claude-x", "claude"),
        ("gemini-stream.sse", "gemini-x", "gem"),
    ],
)
async def test_recorded_native_streams_token_exact(spawn, tmp_path, fsim, name, model, provider, split) -> None:
    gw = serve(spawn, tmp_path, native_config(fsim))
    raw = (FIXTURES / name).read_bytes()
    suffix = f"@replay={name}" + (f"@split={split}" if split else "")
    events = await chat(gw, model + suffix)
    assert [e["seq"] for e in events] == list(range(len(events)))
    start, end = events[0], events[-1]
    assert start["type"] == "start" and start["provider"] == provider
    assert end["status"] == "completed" and "usage_estimated" not in end
    if name.startswith("anthropic"):
        text, _thinking, args = anthropic_expected(raw)
        assert text_of(events) == text
        calls = [e["delta"] for e in events if e["type"] == "tool_call"]
        assert "".join(c.get("arguments", "") for c in calls) == "".join(a for _, a in args)
        if "tooluse" in name:
            assert [c["name"] for c in calls if "name" in c] == ["get_weather", "get_time"]
            assert end["finish_reason"] == "tool_calls" and end["usage"]["prompt_tokens"] == 506
        else:
            assert end["finish_reason"] == "stop" and end["upstream_model"] == "claude-sonnet-4-5-20250929"
            assert (end["usage"]["prompt_tokens"], end["usage"]["completion_tokens"]) == (17, 10)
    else:
        text, usage = gemini_expected(raw)
        assert text_of(events) == text
        assert end["finish_reason"] == "stop"
        assert (
            (end["usage"]["prompt_tokens"], end["usage"]["completion_tokens"])
            == (13, 8)
            == (
                usage["promptTokenCount"],
                usage["candidatesTokenCount"],
            )
        )


@pytest.mark.parametrize(("model", "provider"), [("claude-sonnet-4.5", "claude"), ("gemini-2.5-flash", "gem")])
async def test_generated_native_replies_and_requests(spawn, tmp_path, fsim, model, provider) -> None:
    gw = serve(spawn, tmp_path, native_config(fsim))
    events = await chat(gw, model + "@tps=0", system="Be brief", params={"max_tokens": 12, "temperature": 0.5})
    prompt = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"}]
    assert text_of(events) == "".join(reply_tokens(prompt, 12))
    assert len([e for e in events if e["type"] == "token"]) == 12
    end = events[-1]
    assert end["status"] == "completed" and end["provider"] == provider and "usage_estimated" not in end
    assert end["usage"]["completion_tokens"] == 12 and end["usage"]["prompt_tokens"] == estimate_tokens(prompt)
    (body,) = await get_json(fsim.http + "/_sim/requests")
    if provider == "claude":
        assert body["system"] == "Be brief" and body["max_tokens"] == 12 and body["temperature"] == 0.5
        assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        assert end["finish_reason"] == "length"  # the reply filled max_tokens
    else:
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief"}]}
        assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
        assert body["generationConfig"] == {"temperature": 0.5, "maxOutputTokens": 12}
        assert body["_model"] == "gemini-2.5-flash@tps=0"


@pytest.mark.parametrize("model", ["claude-x", "gemini-x"])
async def test_native_mid_stream_error_keeps_partial_text(spawn, tmp_path, fsim, model) -> None:
    gw = serve(spawn, tmp_path, native_config(fsim))
    events = await chat(gw, model + "@fault=error:3@tps=200", content="partial")
    assert text_of(events) == "".join(reply_tokens([{"role": "user", "content": "partial"}])[:3])
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_error" and err["retryable"] is True
    end = events[-1]
    assert end["status"] == "failed" and end["usage"]["completion_tokens"] == 3 and "usage_estimated" in end
    assert [e["type"] for e in events].count("start") == 1 and events[0]["type"] == "start"


async def test_anthropic_overloaded_before_first_token_is_retried(spawn, tmp_path, fsim) -> None:
    gw = serve(spawn, tmp_path, native_config(fsim))
    events = await chat(gw, "claude-x@replay=anthropic-overloaded.sse")
    assert [e["type"] for e in events] == ["start", "error", "end"]
    err = events[1]
    assert err["code"] == "upstream_error" and err["retryable"] is True and "Overloaded" in err["message"]
    assert err["attempts"] == 2 and err["upstream_type"] == "overloaded_error"
    assert (await get_json(fsim.http + "/_sim/stats"))["requests"] == 2


@pytest.mark.parametrize("model", ["gpt-4.1", "claude-x", "gemini-x"])
async def test_429_retry_after_is_honoured(spawn, tmp_path, fsim, model) -> None:
    gw = serve(spawn, tmp_path, native_config(fsim))
    t0 = time.monotonic()
    events = await chat(gw, model + "@fault=429@retry_after=1@times=1@tps=0", params={"max_tokens": 4})
    took = time.monotonic() - t0
    assert events[0]["attempts"] == 2 and events[-1]["status"] == "completed"
    assert len([e for e in events if e["type"] == "token"]) == 4
    first, second = await get_json(fsim.http + "/_sim/request_times")
    assert 1.0 <= second - first < 1.5, f"retried {second - first:.3f} s after a Retry-After of 1 s"
    assert took < 3


async def test_long_retry_after_is_not_waited_for(spawn, tmp_path, fsim) -> None:
    gw = serve(spawn, tmp_path, native_config(fsim, "retry_max_wait = 2"))
    t0 = time.monotonic()
    events = await chat(gw, "gpt-4.1@fault=429@retry_after=7")
    assert time.monotonic() - t0 < 1.5
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_rate_limited" and err["retry_after"] == 7 and err["attempts"] == 1


def fallback_config(primary_url: str, backup, routing: str, primary_model: str = "gpt-4.1") -> str:
    return f"""
[routing]
{routing}

[providers.primary]
kind = "openai"
base_url = "{primary_url}"
api_key = "k1"
models = ["gpt-4.1"]
model_map = {{ "gpt-4.1" = "{primary_model}" }}

[providers.backup]
kind = "openai"
base_url = "{backup.http}/v1"
api_key = "k2"
models = ["deepseek-v3.2"]
model_map = {{ "deepseek-v3.2" = "deepseek-v3.2@tps=0" }}

[routes."gpt-4.1"]
fallbacks = ["deepseek-v3.2"]
"""


async def test_dead_primary_falls_back_within_configured_time(spawn, tmp_path, sim) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = serve(spawn, tmp_path, fallback_config(dead, sim, "max_retries = 2\nretry_backoff = 0.1"))
    t0 = time.monotonic()
    events = await chat(gw, "gpt-4.1", params={"max_tokens": 5})
    took = time.monotonic() - t0
    start, end = events[0], events[-1]
    assert (start["model"], start["provider"], start["requested_model"]) == ("deepseek-v3.2", "backup", "gpt-4.1")
    assert start["attempts"] == 4  # 1 + 2 retries on the dead primary, then the fallback
    assert end["status"] == "completed" and end["model"] == "deepseek-v3.2" and end["provider"] == "backup"
    # backoff 0.1 + 0.2 (+10 % jitter) and a refused connect each: well under a second
    assert 0.3 <= took < 1.5, took
    # cost at the fallback's prices (0.28 / 0.42 per million), from the usage it reported
    usage = end["usage"]
    assert end["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 0.28 + 5 * 0.42) / 1e6)


async def test_silent_primary_falls_back_after_first_token_timeout(spawn, tmp_path, sim) -> None:
    routing = "max_retries = 0\nfirst_token_timeout = 0.5"
    gw = serve(spawn, tmp_path, fallback_config(sim.http + "/v1", sim, routing, "gpt-4.1@fault=stall:0@tps=100"))
    t0 = time.monotonic()
    events = await chat(gw, "gpt-4.1", params={"max_tokens": 3})
    took = time.monotonic() - t0
    assert events[0]["provider"] == "backup" and events[-1]["status"] == "completed"
    assert 0.5 <= took < 1.5, took

    async def aborted() -> dict | None:  # the fake upstream notices the close on its own schedule
        stats = await get_json(sim.http + "/_sim/stats")
        return stats if stats["aborted"] else None

    stats = await aeventually(aborted, message="the fake upstream saw the silent request closed")
    assert stats["aborted"] == 1, "the silent primary's request was closed"


async def test_open_circuit_is_skipped_then_probed(spawn, tmp_path, sim) -> None:
    primary = spawn("simulate", "--port", "0")
    routing = "max_retries = 0\ncircuit_failures = 2\ncircuit_cooldown = 1.5"
    gw = serve(spawn, tmp_path, fallback_config(primary.http + "/v1", sim, routing, "gpt-4.1@fault=500"))
    for _ in range(2):
        events = await chat(gw, "gpt-4.1", params={"max_tokens": 2})
        assert events[0]["provider"] == "backup" and events[0]["attempts"] == 2
    health = await get_json(gw.http + "/healthz")
    dep = next(d for d in health["deployments"] if d["provider"] == "primary")
    assert dep["circuit"] == "open" and dep["failures"] == 2 and dep["last_error"] == "upstream_error"
    t0 = time.monotonic()
    events = await chat(gw, "gpt-4.1", params={"max_tokens": 2})
    assert events[0]["provider"] == "backup" and "attempts" not in events[0]  # straight to the fallback
    assert time.monotonic() - t0 < 0.5
    assert (await get_json(primary.http + "/_sim/stats"))["requests"] == 2, "open circuit: primary not asked"
    dep = next(d for d in (await get_json(gw.http + "/healthz"))["deployments"] if d["provider"] == "primary")
    assert dep["skipped"] == 1

    async def cooled_down() -> bool:
        deps = (await get_json(gw.http + "/healthz"))["deployments"]
        return next(d for d in deps if d["provider"] == "primary")["circuit"] == "half_open"

    await aeventually(cooled_down, interval=0.05, message="the primary's circuit half-opens after its cool-down")
    # cool-down over: one probe goes to the primary, fails, circuit opens again
    events = await chat(gw, "gpt-4.1", params={"max_tokens": 2})
    assert events[0]["provider"] == "backup" and events[0]["attempts"] == 2
    assert (await get_json(primary.http + "/_sim/stats"))["requests"] == 3
    dep = next(d for d in (await get_json(gw.http + "/healthz"))["deployments"] if d["provider"] == "primary")
    assert dep["circuit"] == "open" and dep["opened"] == 2


async def test_every_circuit_open_fails_fast(spawn, tmp_path, sim) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    routing = "max_retries = 0\ncircuit_failures = 1\ncircuit_cooldown = 30"
    toml = fallback_config(dead, sim, routing).replace('[routes."gpt-4.1"]\nfallbacks = ["deepseek-v3.2"]\n', "")
    gw = serve(spawn, tmp_path, toml)
    first = await chat(gw, "gpt-4.1")
    assert next(e for e in first if e["type"] == "error")["code"] == "upstream_unavailable"
    events = await chat(gw, "gpt-4.1")
    err = next(e for e in events if e["type"] == "error")
    assert err["code"] == "upstream_unavailable" and "circuit open" in err["message"] and err["retryable"]
    assert 25 < err["retry_after"] <= 30
    assert [e["type"] for e in events] == ["start", "error", "end"]


async def test_latency_strategy_prefers_the_faster_deployment(spawn, tmp_path) -> None:
    slow, fast = spawn("simulate", "--port", "0"), spawn("simulate", "--port", "0")
    toml = f"""
[providers.slow]
kind = "openai"
base_url = "{slow.http}/v1"
api_key = "k"
models = ["gpt-4.1"]
model_map = {{ "gpt-4.1" = "gpt-4.1@ttft=300@tps=1000" }}

[providers.fast]
kind = "openai"
base_url = "{fast.http}/v1"
api_key = "k"
models = ["gpt-4.1"]
model_map = {{ "gpt-4.1" = "gpt-4.1@ttft=10@tps=1000" }}

[routes."gpt-4.1"]
deployments = ["slow", "fast"]
strategy = "latency"
"""
    gw = serve(spawn, tmp_path, toml)
    providers = [(await chat(gw, "gpt-4.1", params={"max_tokens": 2}))[0]["provider"] for _ in range(5)]
    assert sorted(providers[:2]) == ["fast", "slow"], "each deployment measured once"
    assert providers[2:] == ["fast"] * 3
    health = {d["provider"]: d for d in (await get_json(gw.http + "/healthz"))["deployments"]}
    assert health["slow"]["ttft_ewma_ms"] > 250 > health["fast"]["ttft_ewma_ms"]


async def test_catalog_override_aliases_and_costs(spawn, tmp_path, fsim) -> None:
    toml = (
        (
            native_config(fsim)
            + """
[providers.claude.model_map]
"claude-sonnet-4.5" = "claude-sonnet-4-5@replay=anthropic-messages-basic.sse"

[providers.gem.model_map]
"gemini-2.5-flash" = "gemini-2.5-flash@replay=gemini-stream.sse"

[models."gpt-4.1"]
input_per_mtok = 10
output_per_mtok = 20

[models."house-model"]
provider = "oai"
upstream_model = "house-v1@tps=0"
context_window = 32000
input_per_mtok = 1.5
output_per_mtok = 4.5

[providers.oai.model_map]
"gpt-4.1" = "gpt-4.1@tps=0"

[aliases]
quick = "gemini-2.5-flash"
"""
        )
        .replace('models = ["claude-*"]', 'models = ["claude-*", "claude-sonnet-4.5"]')
        .replace('models = ["gemini-*"]', 'models = ["gemini-*", "gemini-2.5-flash"]')
        .replace('models = ["gpt-*", "deepseek-*"]', 'models = ["gpt-*", "deepseek-*", "gpt-4.1"]')
    )
    assert "[providers.claude.model_map]" in toml and fsim.http
    gw = serve(spawn, tmp_path, toml)
    # Anthropic: 17 prompt + 10 completion tokens at $3 / $15 per million
    end = (await chat(gw, "best"))[-1]
    assert (end["model"], end["provider"]) == ("claude-sonnet-4.5", "claude")
    assert end["cost_usd"] == pytest.approx(17 * 3e-6 + 10 * 15e-6) == pytest.approx(0.000201)
    # Gemini through an alias from the config: 13 + 8 tokens at $0.30 / $2.50 per million
    events = await chat(gw, "quick")
    assert events[0]["requested_model"] == "quick" and events[0]["model"] == "gemini-2.5-flash"
    assert events[-1]["cost_usd"] == pytest.approx(13 * 0.30e-6 + 8 * 2.50e-6)
    # overridden prices: gpt-4.1 at $10 / $20
    p = estimate_tokens([{"role": "user", "content": "hi"}])
    end = (await chat(gw, "gpt-4.1", params={"max_tokens": 6}))[-1]
    assert end["usage"] == {"prompt_tokens": p, "completion_tokens": 6, "total_tokens": p + 6}
    assert end["cost_usd"] == pytest.approx((p * 10 + 6 * 20) / 1e6)
    # a model only the catalog knows: [models.NAME] provider + upstream_model route it
    end = (await chat(gw, "house-model", params={"max_tokens": 6}))[-1]
    assert end["usage"]["prompt_tokens"] == p and end["provider"] == "oai"
    assert (await get_json(fsim.http + "/_sim/requests"))[-1]["model"] == "house-v1@tps=0"
    assert end["cost_usd"] == pytest.approx((p * 1.5 + 6 * 4.5) / 1e6)
    models = await get_json(gw.http + "/v1/models")
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id["gpt-4.1"]["pricing"] == {"input_per_mtok": 10.0, "output_per_mtok": 20.0}
    assert by_id["house-model"]["context_window"] == 32000 and by_id["house-model"]["provider"] == "oai"
    assert by_id["claude-sonnet-4.5"]["pricing"] == {
        "input_per_mtok": 3.0,
        "output_per_mtok": 15.0,
        "cached_input_per_mtok": 0.3,
        "cache_write_per_mtok": 3.75,
    }
    assert models["aliases"]["quick"] == "gemini-2.5-flash" and models["aliases"]["best"] == "claude-sonnet-4.5"


async def test_estimated_usage_is_priced_and_flagged(spawn, tmp_path, fsim) -> None:
    toml = native_config(fsim) + '\n[providers.oai.model_map]\n"gpt-4.1" = "x@replay=openai-chat-basic.sse"\n'
    toml = toml.replace('models = ["gpt-*", "deepseek-*"]', 'models = ["gpt-*", "deepseek-*", "gpt-4.1"]')
    gw = serve(spawn, tmp_path, toml)
    events = await chat(gw, "gpt-4.1", content="x")
    end = events[-1]
    n = len([e for e in events if e["type"] == "token"])
    prompt = estimate_tokens([{"role": "user", "content": "x"}])
    assert (
        "usage_estimated" in end and end["usage"]["completion_tokens"] == n and end["usage"]["prompt_tokens"] == prompt
    )
    assert end["cost_usd"] == pytest.approx((prompt * 2.0 + n * 8.0) / 1e6)


async def test_cancel_while_waiting_to_retry(spawn, tmp_path, fsim) -> None:
    gw = serve(spawn, tmp_path, native_config(fsim))
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "c", "model": "gpt-4.1@fault=429@retry_after=1.5@times=1", "content": "x"})

        async def waiting_to_retry() -> bool:  # the 429 is recorded just before the wait for Retry-After
            deps = (await get_json(gw.http + "/healthz"))["deployments"]
            return any(d["provider"] == "oai" and d["failures"] >= 1 for d in deps)

        await aeventually(waiting_to_retry, message="the gateway got the 429 and waits to retry")
        t_429 = t0 = time.monotonic()
        await ws.send({"type": "cancel", "id": "c"})
        events = await ws.until_end("c", timeout=5)
    assert time.monotonic() - t0 < 0.5
    assert [e["type"] for e in events] == ["start", "end"] and [e["seq"] for e in events] == [0, 1]
    assert events[-1]["status"] == "cancelled" and events[-1]["reason"] == "cancelled"
    # Stays a sleep: a retry that does not happen can only be shown by waiting past when it would have
    # come (1.5 s after the 429); waiting till 3 s after it gives that a 2x margin.
    await asyncio.sleep(max(0.0, t_429 + 3.0 - time.monotonic()))
    assert (await get_json(fsim.http + "/_sim/stats"))["requests"] == 1, "no retry after the cancel"


@pytest.mark.parametrize(("model", "provider"), [("deepseek-x", "oai"), ("claude-x", "claude"), ("gemini-x", "gem")])
async def test_reasoning_is_its_own_event_kind(spawn, tmp_path, fsim, model, provider) -> None:
    from tokenwire.simulate.reply import reasoning_tokens

    gw = serve(spawn, tmp_path, native_config(fsim))
    events = await chat(gw, model + "@tps=0@reasoning=7", params={"max_tokens": 5})
    kinds = [e["type"] for e in events]
    assert kinds == ["start"] + ["reasoning"] * 7 + ["token"] * 5 + ["end"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert "".join(e["content"] for e in events if e["type"] == "reasoning") == "".join(reasoning_tokens(7))
    assert text_of(events) == "".join(reply_tokens([{"role": "user", "content": "hi"}], 5))
    assert events[0]["provider"] == provider and events[-1]["status"] == "completed"
