"""OpenTelemetry export over real OTLP/HTTP: a gateway process sends its spans and metrics to an
in-process receiver that decodes them with opentelemetry-proto, in front of fake upstreams
(``tokenwire simulate``) that record the ``traceparent`` each request came with."""

from __future__ import annotations

import asyncio
import gzip
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from eventually import aeventually
from wsutil import WS

pytest.importorskip("opentelemetry.sdk", reason="the tokenwire[otel] extra")
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tokenwire.runtime.telemetry import BUCKETS

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


class Receiver:
    """An OTLP/HTTP collector: POST /v1/traces and /v1/metrics, protobuf bodies, kept decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.points: dict[str, list[tuple[dict[str, Any], Any]]] = defaultdict(list)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _body(self, request: web.Request) -> bytes:
        assert request.content_type == "application/x-protobuf", request.content_type
        body = await request.read()
        return gzip.decompress(body) if request.headers.get("Content-Encoding") == "gzip" else body

    async def traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest.FromString(await self._body(request))
        for rs in req.resource_spans:
            self.resources.append(attrs(rs.resource.attributes))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        {
                            "name": s.name,
                            "kind": s.kind,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attrs": attrs(s.attributes),
                            "events": [(e.name, e.time_unix_nano, attrs(e.attributes)) for e in s.events],
                            "status": s.status.code,
                        }
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def metrics(self, request: web.Request) -> web.Response:
        req = ExportMetricsServiceRequest.FromString(await self._body(request))
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    assert m.WhichOneof("data") == "histogram", m.name
                    for p in m.histogram.data_points:
                        self.points[m.name].append((attrs(p.attributes), p, m.unit))
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_post("/v1/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["trace_id"] == trace_id]


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.runner.cleanup()


def config(sim) -> str:
    return f"""
[routing]
max_retries = 1
retry_backoff = 0.05

[providers.primary]
kind = "openai"
base_url = "{sim.http}/v1"
api_key = "k1"
models = ["gpt-4.1"]
model_map = {{ "gpt-4.1" = "gpt-4.1@fault=500" }}

[providers.backup]
kind = "openai"
base_url = "{sim.http}/v1"
api_key = "k2"
models = ["deepseek-v3.2", "claude-sonnet-4.5"]
model_map = {{ "deepseek-v3.2" = "deepseek-v3.2@tps=0", "claude-sonnet-4.5" = "claude-sonnet-4.5@tps=20" }}

[routes."gpt-4.1"]
fallbacks = ["deepseek-v3.2"]
"""


def server_span(spans: list[dict[str, Any]]) -> dict[str, Any]:
    (server,) = [s for s in spans if s["kind"] == Span.SPAN_KIND_SERVER]
    return server


async def test_spans_metrics_and_traceparent_of_a_stream_a_fallback_and_a_cancel(
    receiver: Receiver, spawn, tmp_path: Path, sim
) -> None:  # the receiver first: it outlives the gateway, which flushes to it as it stops
    path = tmp_path / "gw.toml"
    path.write_text(config(sim))
    env = {
        "TOKENWIRE_DB": ":memory:",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "tw-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
    }
    gw = spawn("serve", "--port", "0", "--config", str(path), env=env)
    timeout = aiohttp.ClientTimeout(total=20)

    # 1. a streamed chat over HTTP, under the caller's span (the traceparent header)
    caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    body = {
        "model": "deepseek-v3.2",
        "stream": True,
        "max_tokens": 7,
        "temperature": 0.5,
        "messages": [{"role": "user", "content": "hello otel"}],
    }
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.post(gw.http + "/v1/chat/completions", json=body, headers={"traceparent": caller}) as r,
    ):
        assert r.status == 200
        text = await r.text()
    assert "data: [DONE]" in text

    spans = await aeventually(
        lambda: len(receiver.trace(CALLER_TRACE)) >= 2 or None, timeout=10, message="the HTTP chat's spans"
    )
    spans = receiver.trace(CALLER_TRACE)
    assert len(spans) == 2
    server = server_span(spans)
    (client,) = [s for s in spans if s["kind"] == Span.SPAN_KIND_CLIENT]
    assert server["name"] == "chat deepseek-v3.2" and server["parent"] == CALLER_SPAN
    a = server["attrs"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "backup"
    assert a["gen_ai.request.model"] == "deepseek-v3.2"
    assert a["gen_ai.response.model"] == "deepseek-v3.2@tps=0"  # the provider's own id
    assert a["gen_ai.request.max_tokens"] == 7 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.output_tokens"] == 7 and a["gen_ai.usage.input_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == ["stop"]  # the provider's reason, as relayed
    assert "error.type" not in a and server["status"] != 2
    assert '"content":"hello otel"' in a["gen_ai.input.messages"]
    assert '"role":"assistant"' in a["gen_ai.output.messages"]
    assert [e[0] for e in server["events"]] == ["tokenwire.first_token"]
    assert server["start"] < server["events"][0][1] < server["end"]
    assert client["parent"] == server["span_id"] and client["name"] == "chat deepseek-v3.2@tps=0"
    assert client["attrs"]["server.address"] == "127.0.0.1" and client["attrs"]["gen_ai.provider.name"] == "backup"
    assert server["start"] <= client["start"] <= client["end"] <= server["end"]
    assert receiver.resources[0]["service.name"] == "tw-under-test"
    # the provider was asked under the CLIENT span: same trace, its span id, sampled
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(sim.http + "/_sim/headers") as r:
        sent = await r.json()
    assert sent[-1]["traceparent"] == f"00-{CALLER_TRACE}-{client['span_id']}-01"

    # 2. a fallback: the primary answers 500 twice (1 + 1 retry), then the backup; the v1 frame's traceparent
    frame_trace = "0af7651916cd43dd8448eb211c80319c"
    async with await WS.connect(gw.ws) as ws:
        frame = {"type": "chat", "id": "f", "model": "gpt-4.1", "content": "fall back", "params": {"max_tokens": 3}}
        await ws.send({**frame, "traceparent": f"00-{frame_trace}-b7ad6b7169203331-01"})
        events = await ws.until_end("f")
    assert events[0]["provider"] == "backup" and events[0]["attempts"] == 3 and events[-1]["status"] == "completed"
    await aeventually(lambda: len(receiver.trace(frame_trace)) >= 4 or None, timeout=10, message="fallback spans")
    spans = receiver.trace(frame_trace)
    server = server_span(spans)
    assert server["parent"] == "b7ad6b7169203331" and server["name"] == "chat gpt-4.1"
    assert server["attrs"]["gen_ai.provider.name"] == "backup" and server["attrs"]["tokenwire.attempts"] == 3
    clients = sorted(
        (s for s in spans if s["kind"] == Span.SPAN_KIND_CLIENT), key=lambda s: s["attrs"]["tokenwire.attempt"]
    )
    assert [c["parent"] for c in clients] == [server["span_id"]] * 3
    assert [c["attrs"]["gen_ai.provider.name"] for c in clients] == ["primary", "primary", "backup"]
    assert [c["attrs"].get("error.type") for c in clients] == ["upstream_error", "upstream_error", None]
    assert [c["attrs"].get("http.response.status_code") for c in clients] == [500, 500, None]
    assert [c["status"] for c in clients] == [2, 2, 0]  # STATUS_CODE_ERROR on the failed attempts
    assert clients[0]["end"] <= clients[1]["start"] and clients[1]["end"] <= clients[2]["start"]
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(sim.http + "/_sim/headers") as r:
        sent = [h for h in await r.json() if h["traceparent"] and frame_trace in h["traceparent"]]
    assert [h["traceparent"] for h in sent] == [f"00-{frame_trace}-{c['span_id']}-01" for c in clients]
    assert [h["model"] for h in sent] == ["gpt-4.1@fault=500", "gpt-4.1@fault=500", "deepseek-v3.2@tps=0"]

    # 3. a cancelled chat, with no traceparent: a trace of its own
    async with await WS.connect(gw.ws) as ws:
        frame = {"type": "chat", "id": "c", "model": "claude-sonnet-4.5", "content": "a long one"}
        await ws.send({**frame, "params": {"max_tokens": 500}})
        while (await ws.recv())["type"] != "token":
            pass
        await ws.send({"type": "cancel", "id": "c"})
        events = await ws.until_end("c")
    assert events[-1]["status"] == "cancelled"
    stream_id = events[0]["stream_id"] if "stream_id" in events[0] else None

    def cancelled() -> dict[str, Any] | None:
        for s in receiver.spans:
            if s["name"] == "chat claude-sonnet-4.5" and s["kind"] == Span.SPAN_KIND_SERVER:
                return s
        return None

    server = await aeventually(cancelled, timeout=10, message="the cancelled chat's span")
    assert server["parent"] == "" and server["trace_id"] not in (CALLER_TRACE, frame_trace)
    if stream_id:
        assert server["attrs"]["gen_ai.response.id"] == stream_id
    names = [e[0] for e in server["events"]]
    assert names == ["tokenwire.first_token", "tokenwire.cancel"]
    assert server["events"][1][2] == {"tokenwire.cancel_reason": "cancelled"}
    assert server["attrs"]["tokenwire.status"] == "cancelled" and server["attrs"]["gen_ai.response.finish_reasons"] == [
        "cancelled"
    ]
    assert 0 < server["attrs"]["gen_ai.usage.output_tokens"] < 500
    spans = receiver.trace(server["trace_id"])
    assert len(spans) == 2
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(sim.http + "/_sim/headers") as r:
        last = (await r.json())[-1]
    (client,) = [s for s in spans if s["kind"] == Span.SPAN_KIND_CLIENT]
    assert last["traceparent"] == f"00-{server['trace_id']}-{client['span_id']}-01"

    # metrics: cumulative histograms, one point per attribute set; the last export has the totals
    def latest(name: str) -> dict[tuple, Any]:
        out = {}
        for a, p, unit in receiver.points[name]:
            out[tuple(sorted(a.items()))] = (a, p, unit)
        return out

    def all_three() -> bool | None:  # every generation's values exported (the cancelled one last)
        durations = latest("gen_ai.client.operation.duration")
        return (set(receiver.points) >= set(BUCKETS) and sum(p.count for _, p, _ in durations.values()) >= 3) or None

    await aeventually(all_three, timeout=10, message="the GenAI metrics of all three chats")
    for name, bounds in BUCKETS.items():
        for a, p, _unit in latest(name).values():
            assert list(p.explicit_bounds) == list(bounds), name
            assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "backup"
    durations = latest("gen_ai.client.operation.duration")
    assert sum(p.count for _, p, _ in durations.values()) == 3
    assert all(u == "s" for _, _, u in durations.values())
    usage = latest("gen_ai.client.token.usage")
    out = [p for a, p, _ in usage.values() if a["gen_ai.token.type"] == "output"]
    assert sum(p.count for p in out) == 3
    assert (
        next(
            p
            for a, p, _ in usage.values()
            if a["gen_ai.token.type"] == "output" and a["gen_ai.request.model"] == "gpt-4.1"
        ).sum
        == 3
    )
    ttft = latest("gen_ai.server.time_to_first_token")
    assert sum(p.count for _, p, _ in ttft.values()) == 2  # successful responses only: not the cancelled one
    tpot = latest("gen_ai.server.time_per_output_token")
    assert sum(p.count for _, p, _ in tpot.values()) == 2

    # stopping flushes: the gateway's last export reaches the receiver (served by this loop meanwhile)
    exports = len(receiver.points["gen_ai.client.operation.duration"])
    assert await asyncio.to_thread(gw.stop) == 0
    assert len(receiver.points["gen_ai.client.operation.duration"]) > exports
