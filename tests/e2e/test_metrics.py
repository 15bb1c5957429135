"""/metrics, structured logs and the polling endpoint, against real gateway processes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import orjson
import pytest
from eventually import aeventually
from procs import Proc
from wsutil import WS, text_of

MSGS = [{"role": "user", "content": "hi"}]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _key(name: str, labels: dict[str, str]) -> str:
    """``name{a="1",b="2"}`` with the labels sorted: their order on the page carries no meaning."""
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")


async def scrape(proc: Proc) -> dict[str, float]:
    """``name{labels}`` (labels sorted) -> value, checking every line is valid exposition text."""
    async with aiohttp.ClientSession() as s, s.get(proc.http + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \w+ ", line), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out[_key(m.group(1), labels)] = float(m.group(3))
    return out


def g(metrics: dict[str, float], name: str, **labels: str) -> float:
    return metrics.get(_key(name, labels), 0.0)


def log_lines(proc: Proc) -> list[dict]:
    return [orjson.loads(line) for line in proc.text().splitlines() if line.startswith("{")]


async def test_metrics_count_known_generations_exactly(gateway: Proc) -> None:
    before = await scrape(gateway)
    assert g(before, "tokenwire_open_sockets") == 0
    ends = []
    async with await WS.connect(gateway.ws) as ws:
        for i in range(3):
            await ws.send(
                {"type": "chat", "id": f"a{i}", "model": "gpt-4.1", "messages": MSGS, "params": {"max_tokens": 5}}
            )
            ends.append((await ws.until_end(f"a{i}"))[-1])
        await ws.send(
            {"type": "chat", "id": "d", "model": "deepseek-v3.2", "messages": MSGS, "params": {"max_tokens": 7}}
        )
        ends.append((await ws.until_end("d"))[-1])
        await ws.send({"type": "chat", "id": "x", "model": "no-such-model", "content": "hi"})
        assert (await ws.recv())["code"] == "unknown_model"
        during = await scrape(gateway)
        assert g(during, "tokenwire_open_sockets") == 1
        assert g(during, "tokenwire_generations_in_flight") == 0
    m = await scrape(gateway)
    gpt = {"model": "gpt-4.1", "provider": "simulated"}
    ds = {"model": "deepseek-v3.2", "provider": "simulated"}
    assert g(m, "tokenwire_generations_total", **gpt, status="completed") == 3
    assert g(m, "tokenwire_generations_total", **ds, status="completed") == 1
    assert g(m, "tokenwire_tokens_relayed_total", **gpt) == 15
    assert g(m, "tokenwire_tokens_relayed_total", **ds) == 7
    assert g(m, "tokenwire_usage_tokens_total", **gpt, kind="completion") == 15
    assert g(m, "tokenwire_ttft_seconds_count", **gpt) == 3
    assert g(m, "tokenwire_ttft_seconds_bucket", **gpt, le="+Inf") == 3
    assert g(m, "tokenwire_ttft_seconds_sum", **gpt) == pytest.approx(
        sum(e["timing"]["ttft_ms"] for e in ends[:3]) / 1000, rel=1e-6
    )
    assert g(m, "tokenwire_cost_usd_total", **gpt) == pytest.approx(sum(e["cost_usd"] for e in ends[:3]), rel=1e-9)
    assert g(m, "tokenwire_cost_usd_total", **ds) == pytest.approx(ends[3]["cost_usd"], rel=1e-9)
    assert g(m, "tokenwire_ws_connections_total") == 1
    assert g(m, "tokenwire_client_errors_total", code="unknown_model") == 1
    # histogram buckets are cumulative and end at the count
    buckets = [v for k, v in m.items() if k.startswith("tokenwire_ttft_seconds_bucket{") and 'model="gpt-4.1"' in k]
    assert buckets == sorted(buckets) and buckets[-1] == 3


async def test_limit_rejections_cancellations_and_resumes_are_counted(gateway: Proc) -> None:
    async with await WS.connect(gateway.ws) as ws:
        for i in range(32):
            await ws.send({"type": "chat", "id": f"c{i}", "messages": MSGS, "params": {"max_tokens": 1000}})
        await ws.send({"type": "chat", "id": "one-too-many", "messages": MSGS})
        while True:
            event = await ws.recv()
            if event.get("type") == "error" and event.get("id") == "one-too-many":
                assert event["code"] == "rate_limited"
                break
        for i in range(32):
            await ws.send({"type": "cancel", "id": f"c{i}"})
        for i in range(32):
            await ws.until_end(f"c{i}")
        await ws.send(
            {"type": "chat", "id": "r", "stream_id": "stream-resume-1", "content": "hi", "params": {"max_tokens": 3}}
        )
        await ws.until_end("r")
    async with await WS.connect(gateway.ws) as ws:
        await ws.send({"type": "attach", "id": "r2", "stream_id": "stream-resume-1", "last_seq": 1})
        assert (await ws.until_end("r2"))[-1]["status"] == "completed"
        await ws.send({"type": "attach", "id": "r3", "stream_id": "stream-unknown-1", "last_seq": 1})
        assert (await ws.recv())["code"] == "stream_expired"
    m = await scrape(gateway)
    assert g(m, "tokenwire_limit_rejections_total", reason="generations_per_socket") == 1
    assert g(m, "tokenwire_cancellations_total", reason="cancelled") == 32
    assert g(m, "tokenwire_resumes_total") == 1
    assert g(m, "tokenwire_reconnects_total") == 2
    assert g(m, "tokenwire_ws_connections_total") == 2


async def test_upstream_errors_by_code(relay: Proc) -> None:
    async with await WS.connect(relay.ws) as ws:
        for i, fault in enumerate(("429", "429", "500")):
            await ws.send({"type": "chat", "id": f"e{i}", "model": f"gpt-4.1@fault={fault}", "messages": MSGS})
            assert (await ws.until_end(f"e{i}"))[-1]["status"] == "failed"
    m = await scrape(relay)
    assert (
        g(m, "tokenwire_upstream_errors_total", provider="openai", code="upstream_rate_limited", upstream_status="429")
        == 2
    )
    assert g(m, "tokenwire_upstream_errors_total", provider="openai", code="upstream_error", upstream_status="500") == 1
    assert g(m, "tokenwire_generations_total", model="gpt-4.1@fault=429", provider="openai", status="failed") == 2


async def test_logs_are_json_lines_without_key_or_prompt(relay: Proc) -> None:
    secret_prompt = "my-private-prompt-7781"
    async with await WS.connect(relay.ws + "?key=hs_client_secret_key_991") as ws:
        await ws.send(
            {"type": "chat", "id": "a", "model": "gpt-4.1", "content": secret_prompt, "params": {"max_tokens": 4}}
        )
        events = await ws.until_end("a")
        start, end = events[0], events[-1]
    async with aiohttp.ClientSession() as s:
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": secret_prompt}], "max_tokens": 3}
        async with s.post(
            relay.http + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer hs_hdr_secret_55"}
        ) as r:
            assert r.status == 200

    def logged() -> bool:
        lines = log_lines(relay)
        routes = {x["route"] for x in lines if x["event"] == "request"}
        return len([x for x in lines if x["event"] == "generation"]) >= 2 and routes >= {
            "/ws/chat",
            "/v1/chat/completions",
        }

    await aeventually(logged, message="both generations and both requests logged")
    text = relay.text()
    for needle in (secret_prompt, "sk-test-key-never-shown", "hs_client_secret_key_991", "hs_hdr_secret_55"):
        assert needle not in text
    lines = log_lines(relay)
    gens = [x for x in lines if x["event"] == "generation"]
    reqs = [x for x in lines if x["event"] == "request"]
    assert len(gens) == 2
    assert gens[0]["stream_id"] == start["stream_id"]
    assert gens[0]["usage"] == end["usage"] and gens[0]["timing"] == end["timing"]
    assert gens[0]["cost_usd"] == end["cost_usd"] and gens[0]["status"] == "completed"
    assert {r["route"] for r in reqs} >= {"/ws/chat", "/v1/chat/completions"}
    ws_req = next(r for r in reqs if r["route"] == "/ws/chat")
    assert ws_req["websocket"] is True and ws_req["status"] == 101 and "ms" in ws_req


async def test_prompts_are_logged_only_when_debug_says_so(spawn, tmp_path: Path) -> None:
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={"TOKENWIRE_DB": ":memory:", "TOKENWIRE_SIMULATED_SPEED": "20", "TOKENWIRE_LOG_PROMPTS": "1"},
    )
    async with await WS.connect(gw.ws) as ws:
        await ws.send({"type": "chat", "id": "a", "content": "debug-prompt-123", "params": {"max_tokens": 3}})
        events = await ws.until_end("a")
    gen = await aeventually(
        lambda: next((x for x in log_lines(gw) if x["event"] == "generation"), None), message="generation logged"
    )
    assert gen["prompt"] == "debug-prompt-123"
    assert gen["reply"] == text_of(events)


async def _poll_all(s: aiohttp.ClientSession, base: str, sid: str, wait: float) -> list[dict]:
    events: list[dict] = []
    after = -1
    while True:
        async with s.get(f"{base}/v1/poll/{sid}", params={"after": str(after), "wait": str(wait)}) as r:
            assert r.status == 200
            body = await r.json()
        events += body["events"]
        assert body["next_after"] == after + len(body["events"])
        after = body["next_after"]
        if body["done"]:
            return events
        if not wait:
            await asyncio.sleep(0.01)  # the behaviour under test: a client short-polling (wait=0) at its own pace


@pytest.mark.parametrize("wait", [0, 2])
async def test_polling_returns_every_token_in_order(gateway: Proc, wait: float) -> None:
    async with await WS.connect(gateway.ws) as ws:
        await ws.send(
            {
                "type": "chat",
                "id": "w",
                "model": "gpt-4.1",
                "messages": [{"role": "user", "content": "poll me"}],
                "params": {"max_tokens": 40},
            }
        )
        reference = text_of(await ws.until_end("w"))
    async with aiohttp.ClientSession() as s:
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "poll me"}], "max_tokens": 40}
        async with s.post(gateway.http + "/v1/poll/start", json=body) as r:
            assert r.status == 200
            sid = (await r.json())["id"]
        events = await _poll_all(s, gateway.http, sid, wait)
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert events[0]["type"] == "start" and events[-1]["type"] == "end"
        assert events[-1]["status"] == "completed" and events[-1]["usage"]["completion_tokens"] == 40
        assert text_of(events) == reference
        # polling again from the middle returns the rest, once more
        async with s.get(f"{gateway.http}/v1/poll/{sid}?after=30") as r:
            rest = (await r.json())["events"]
        assert [e["seq"] for e in rest] == list(range(31, len(events)))
        async with s.get(f"{gateway.http}/v1/poll/s_nope") as r:
            assert r.status == 404
        async with s.post(gateway.http + "/v1/poll/start", json={"model": "nope", "messages": []}) as r:
            assert r.status in (400, 404)
