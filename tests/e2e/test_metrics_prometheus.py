"""/metrics under ``serve --workers 2``, read with prometheus_client's own parser after a known workload.

Two workers behind SO_REUSEPORT each take part of the work (the test checks both did); every scrape,
whichever worker answers it, must describe the whole gateway: the same exact counts each time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
from eventually import aeventually
from prometheus_client.parser import text_string_to_metric_families
from rawws import Raw, text
from redisutil import new_prefix
from wsutil import connect_worker as connect

FAST = "gpt-4.1@tps=0"  #: the known workload: every reply as fast as the fake upstream can
SLOW = "gpt-4.1@tps=0@pace=700"  #: one SSE reply with a 0.7 s stall after each token: seen open, gaps seen
HOG = "gpt-4.1@tokens=400000@tps=0@batch=50"  #: for the reader that never reads
WS_TOKENS = [5, 6, 7, 8, 9, 10, 11, 12]  #: max_tokens of the WebSocket chats (one per socket)
SSE_TOKENS = [3, 4, 5, 6]
SLOW_TOKENS = 4

#: every family the page must have (counters by their family name, without ``_total``)
FAMILIES = {
    "tokenwire_build_info": "gauge",
    "tokenwire_open_sockets": "gauge",
    "tokenwire_ws_connections": "counter",
    "tokenwire_open_sse_responses": "gauge",
    "tokenwire_send_buffer_bytes": "gauge",
    "tokenwire_send_buffer_max_bytes": "gauge",
    "tokenwire_generations_in_flight": "gauge",
    "tokenwire_generations_retained": "gauge",
    "tokenwire_generations": "counter",
    "tokenwire_tokens_relayed": "counter",
    "tokenwire_usage_tokens": "counter",
    "tokenwire_cost_usd": "counter",
    "tokenwire_ttft_seconds": "histogram",
    "tokenwire_generation_seconds": "histogram",
    "tokenwire_token_gap_max_seconds": "histogram",
    "tokenwire_upstream_errors": "counter",
    "tokenwire_cancellations": "counter",
    "tokenwire_slow_consumer_cutoffs": "counter",
    "tokenwire_limit_rejections": "counter",
    "tokenwire_client_errors": "counter",
    "tokenwire_resumes": "counter",
    "tokenwire_reconnects": "counter",
    "tokenwire_http_requests": "counter",
    "tokenwire_event_loop_lag_seconds": "histogram",
    "tokenwire_gc_pause_seconds": "histogram",
    "tokenwire_store_write_seconds": "histogram",
    "tokenwire_redis_seconds": "histogram",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
    "process_start_time_seconds": "gauge",
}


class Page:
    """One parsed scrape: ``value(sample name, **labels)`` and every family by name."""

    def __init__(self, body: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(body)}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in self.families.values():
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"sample twice on one page: {key}"
                self.samples[key] = s.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def histograms(self) -> Iterator[tuple[str, dict[str, str], list[tuple[float, float]], float, float]]:
        """(family, labels, [(le, cumulative count)], count, sum) for every histogram series."""
        for family in self.families.values():
            if family.type != "histogram":
                continue
            series: dict[frozenset, dict[str, Any]] = {}
            for s in family.samples:
                labels = {k: v for k, v in s.labels.items() if k != "le"}
                one = series.setdefault(frozenset(labels.items()), {"labels": labels, "buckets": []})
                if s.name.endswith("_bucket"):
                    one["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    one["count"] = s.value
                elif s.name.endswith("_sum"):
                    one["sum"] = s.value
            for one in series.values():
                yield family.name, one["labels"], one["buckets"], one["count"], one["sum"]


async def scrape(session: aiohttp.ClientSession, url: str, scope: str | None = None) -> Page:
    params = {"scope": scope} if scope else {}
    # a new connection each time: the kernel hands it to either worker
    async with session.get(url + "/metrics", params=params, headers={"Connection": "close"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return Page(await r.text())


async def sse_chat(session: aiohttp.ClientSession, base: str, model: str, max_tokens: int, first: Any = None) -> int:
    """One streamed Chat Completion; the number of content chunks it carried (``first`` set at the first)."""
    body = {"model": model, "messages": [{"role": "user", "content": "count"}], "max_tokens": max_tokens}
    body["stream"] = True
    n = 0
    async with session.post(base + "/v1/chat/completions", json=body, headers={"Connection": "close"}) as r:
        assert r.status == 200
        async for line in r.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                n += 1
                if first is not None and not first.done():
                    first.set_result(None)
    return n


async def test_prometheus_reads_the_whole_gateway_under_two_workers(spawn, sim, redis_url) -> None:
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": sim.http + "/v1",
        "TOKENWIRE_REDIS_URL": redis_url,
        "TOKENWIRE_REDIS_PREFIX": new_prefix(),
        "TOKENWIRE_DB": ":memory:",
        "TOKENWIRE_SLOW_CONSUMER_TIMEOUT": "1",
    }
    gw = spawn("serve", "--port", "0", "--workers", "2", env=env, timeout=40)

    # WebSocket chats, one per socket, until both workers took some (resumable, in a conversation:
    # each ships its log to Redis and stores its turn there)
    workers: set[str] = set()
    ws_sent: list[int] = []
    while len(ws_sent) < len(WS_TOKENS) or len(workers) < 2:
        assert len(ws_sent) < 40, "40 sockets all reached one worker"
        want = WS_TOKENS[len(ws_sent) % len(WS_TOKENS)]
        ws, worker = await connect(gw.ws)
        workers.add(worker)
        async with ws:
            sid = f"prom-{uuid.uuid4().hex[:12]}"
            await ws.send(
                {
                    "type": "chat",
                    "id": "c",
                    "model": FAST,
                    "content": "count",
                    "stream_id": sid,
                    "params": {"max_tokens": want},
                }
            )
            events = await ws.until_end("c")
        assert events[-1]["status"] == "completed", events[-1]
        assert sum(1 for e in events if e["type"] == "token") == want
        ws_sent.append(want)

    async with aiohttp.ClientSession() as s:
        sse_sent = [await sse_chat(s, gw.http, FAST, n) for n in SSE_TOKENS]
        assert sse_sent == SSE_TOKENS

        # an SSE reply seen open while it streams
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slow = asyncio.create_task(sse_chat(s, gw.http, SLOW, SLOW_TOKENS, first))
        await asyncio.wait_for(first, 10)

        async def sse_open() -> Page | None:
            page = await scrape(s, gw.http)
            return page if page.value("tokenwire_open_sse_responses") == 1 else None

        during = await aeventually(sse_open, timeout=10, message="the slow SSE reply shows as open")
        assert during.value("tokenwire_generations_in_flight") == 1
        assert await asyncio.wait_for(slow, 20) == SLOW_TOKENS

        # a reader that never reads: its buffer fills, it is cut off after slow_consumer_timeout
        hog = await Raw.connect(gw.host, gw.port, rcvbuf=4096)
        assert hog.status == 101
        await hog.send(
            text({"type": "chat", "id": "hog", "model": HOG, "content": "x", "params": {"max_tokens": 400_000}})
        )
        try:

            async def cut() -> Page | None:
                page = await scrape(s, gw.http)
                return page if page.value("tokenwire_slow_consumer_cutoffs_total") == 1 else None

            page = await aeventually(cut, timeout=40, interval=0.3, message="the stalled reader is cut off")
            # still connected and still not reading: its send buffer is past the 256 KiB limit
            top = page.value("tokenwire_send_buffer_max_bytes", transport="ws")
            assert top is not None and top >= 256 * 1024, top
            assert page.value("tokenwire_send_buffer_bytes", transport="ws") >= top
            assert page.value("tokenwire_open_sockets") == 1
        finally:
            hog.close()

        async def hog_counted() -> Page | None:
            page = await scrape(s, gw.http)
            return page if page.value("tokenwire_cancellations_total", reason="slow_consumer") == 1 else None

        await aeventually(hog_counted, timeout=20, message="the cut generation ends, cancelled")
        pages = [await scrape(s, gw.http) for _ in range(6)]
        own = await scrape(s, gw.http, scope="worker")

    fast = {"model": FAST, "provider": "openai"}
    total = sum(ws_sent) + sum(sse_sent)
    chats = len(ws_sent) + len(sse_sent)
    for page in pages:  # whichever worker answered
        for name, kind in FAMILIES.items():
            assert name in page.families, f"{name} missing"
            assert page.families[name].type == kind, (name, page.families[name].type)
        assert page.value("tokenwire_tokens_relayed_total", **fast) == total
        assert page.value("tokenwire_usage_tokens_total", **fast, kind="completion") == total
        assert page.value("tokenwire_generations_total", **fast, status="completed") == chats
        assert page.value("tokenwire_tokens_relayed_total", model=SLOW, provider="openai") == SLOW_TOKENS
        assert page.value("tokenwire_ws_connections_total") == len(ws_sent) + 1
        assert page.value("tokenwire_generations_total", model=HOG, provider="openai", status="cancelled") == 1
        assert page.value("tokenwire_slow_consumer_cutoffs_total") == 1
        assert page.value("tokenwire_open_sse_responses") == 0
        assert page.value("tokenwire_open_sockets") == 0
        assert page.value("tokenwire_generations_in_flight") == 0
        # one observation per generation; every reply had 2+ tokens, so each has a longest gap
        for h in ("tokenwire_ttft_seconds", "tokenwire_generation_seconds", "tokenwire_token_gap_max_seconds"):
            assert page.value(h + "_count", **fast) == chats, h
        assert page.value("tokenwire_token_gap_max_seconds_count", model=SLOW, provider="openai") == 1
        # the paced reply stalled 0.7 s between tokens: seen within one 0.25 s tick; the fast ones never stalled
        slow_gap = page.value("tokenwire_token_gap_max_seconds_sum", model=SLOW, provider="openai")
        assert 0.4 <= slow_gap <= 1.2, slow_gap  # 0.7 s, within a tick (and some loop lag)
        assert page.value("tokenwire_token_gap_max_seconds_bucket", model=SLOW, provider="openai", le="0.25") == 0
        assert page.value("tokenwire_token_gap_max_seconds_bucket", **fast, le="0.25") == chats
        # every WebSocket chat stored its turn in Redis (the cut one too: a cancelled reply keeps what was
        # sent); the SSE chats, without a conversation, did not
        assert page.value("tokenwire_store_write_seconds_count", store="redis") == len(ws_sent) + 1
        assert page.value("tokenwire_redis_seconds_count", client="store", op="call") >= len(ws_sent)
        assert page.value("tokenwire_redis_seconds_count", client="store", op="ship") >= 1
        assert page.value("tokenwire_event_loop_lag_seconds_count") >= 2  # one probe each 0.25 s, per worker
        # each worker's full pass once started (gc_policy "tuned"), and young passes while serving
        assert page.value("tokenwire_gc_pause_seconds_count", generation="2") >= 2
        assert page.value("tokenwire_gc_pause_seconds_count", generation="0") >= 2
        assert 0 < page.value("tokenwire_gc_pause_seconds_sum", generation="2") < 2.0
        assert page.value("process_resident_memory_bytes") > 20e6  # two Python processes
        assert page.value("process_cpu_seconds_total") > 0
        assert 0 < page.value("process_start_time_seconds") <= time.time()
        for family, labels, buckets, count, total_s in page.histograms():
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), (family, labels)
            assert buckets[-1][0] == float("inf") and counts[-1] == count, (family, labels)
            assert total_s >= 0, (family, labels)
    assert (
        len(
            {
                p.value("tokenwire_http_requests_total", method="POST", route="/v1/chat/completions", status="200")
                for p in pages
            }
        )
        == 1
    )
    # one worker's own page has only its share of the tokens (so the pages above are sums)
    assert own.value("tokenwire_tokens_relayed_total", **fast) < total
    assert own.value("process_resident_memory_bytes") < pages[-1].value("process_resident_memory_bytes")
    assert "Traceback" not in gw.text()
