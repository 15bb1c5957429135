"""OpenTelemetry export with the GenAI semantic conventions (the ``tokenwire[otel]`` extra).

Imported only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (runtime.tracing.start_telemetry),
so the base install never imports opentelemetry. Everything is configured by the standard
``OTEL_*`` variables, read by the SDK itself: endpoint, headers, service name and resource,
sampler, batch and export intervals.

Nothing here runs per token. When a generation ends, :meth:`Telemetry.on_finish` gets its
RunSummary and writes, after the fact, with explicit start and end times:

* one SERVER span ``chat {model}`` (``gen_ai.*`` attributes, ``error.type`` on failure,
  events for the first token, each resume, a cancel and a slow-consumer cut-off);
* one CLIENT child span per upstream attempt (so retries and fallbacks show, each with its
  provider and error), whose ids are the ones already sent to the provider in ``traceparent``
  (runtime.tracing picks them at the start; :class:`_Ids` hands them to the SDK here);
* one value in each of the four GenAI histograms, with the conventions' bucket boundaries.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ..version import __version__
from .routing.plan import Attempt
from .summary import RunSummary

__all__ = ["BUCKETS", "Telemetry"]

log = logging.getLogger("tokenwire.telemetry")

#: explicit bucket boundaries from the GenAI semantic conventions (gen-ai-metrics.md)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_DURATION = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
BUCKETS = {
    "gen_ai.client.token.usage": _TOKENS,
    "gen_ai.client.operation.duration": _DURATION,
    "gen_ai.server.time_to_first_token": _TTFT,
    "gen_ai.server.time_per_output_token": _TPOT,
}

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


class _Ids(IdGenerator):
    """Random ids, except the one id set just before a ``start_span``: the span then gets the id
    that was chosen when the generation started (and already sent upstream in ``traceparent``)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.span_id: int | None = None
        self.trace_id: int | None = None

    def generate_span_id(self) -> int:
        value, self.span_id = self.span_id, None
        return value if value is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        value, self.trace_id = self.trace_id, None
        return value if value is not None else self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True  # runtime.tracing draws all 128 bits at random too


def _server(base_url: str | None) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of a provider's base URL (nothing for the embedded one)."""
    if not base_url:
        return {}
    try:
        parts = urlsplit(base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return {}
    return {"server.address": parts.hostname, "server.port": port} if parts.hostname else {}


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    out = []
    for part in content or ():
        if isinstance(part, dict) and part.get("type") == "text":
            out.append({"type": "text", "content": part.get("text", "")})
        elif isinstance(part, dict):
            out.append({"type": str(part.get("type", "unknown"))})
    return out


def _messages(summary: RunSummary) -> dict[str, str]:
    """``gen_ai.input.messages`` / ``output.messages`` / ``system_instructions``, as JSON (the
    conventions' structure: role + parts). Only with OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT."""
    chat = summary.chat
    new = chat.messages if chat.messages is not None else [{"role": "user", "content": chat.content or ""}]
    system = [m for m in new if m.get("role") == "system"]
    inputs = [{"role": m.get("role"), "parts": _parts(m.get("content"))} for m in new if m.get("role") != "system"]
    out = {
        "gen_ai.input.messages": orjson.dumps(inputs).decode(),
        "gen_ai.output.messages": orjson.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": summary.reply}],
                    "finish_reason": summary.finish_reason or "error",
                }
            ]
        ).decode(),
    }
    instructions = [p for m in system for p in _parts(m.get("content"))]
    if chat.system is not None:
        instructions.append({"type": "text", "content": chat.system})
    if instructions:
        out["gen_ai.system_instructions"] = orjson.dumps(instructions).decode()
    return out


class Telemetry:
    """The gateway's tracer and meter providers, and the ``on_finish`` hook that feeds them."""

    def __init__(self, environ: Any = os.environ) -> None:
        attrs: dict[str, Any] = {"service.version": __version__}
        if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
            attrs["service.name"] = "tokenwire"
        if "service.instance.id=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
            # one per process: `serve --workers N` exports N cumulative series a collector can sum
            attrs["service.instance.id"] = str(uuid.uuid4())
        resource = Resource.create(attrs)
        self._ids = _Ids()
        # endpoint, headers, timeouts, sampler, batch delays: all from the OTEL_* variables
        self.tracer_provider = TracerProvider(resource=resource, id_generator=self._ids, shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.tracer_provider.get_tracer("tokenwire", __version__)
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
        meter = self.meter_provider.get_meter("tokenwire", __version__)

        def histogram(name: str, unit: str, description: str) -> Any:
            return meter.create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=BUCKETS[name]
            )

        self.token_usage = histogram("gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.")
        self.duration = histogram("gen_ai.client.operation.duration", "s", "GenAI operation duration.")
        self.ttft = histogram(
            "gen_ai.server.time_to_first_token", "s", "Time to generate first token for successful responses."
        )
        self.tpot = histogram(
            "gen_ai.server.time_per_output_token",
            "s",
            "Time per output token generated after the first token for successful responses.",
        )
        self.capture_content = environ.get(CAPTURE_ENV, "").strip().lower() == "true"

    async def on_finish(self, summary: RunSummary) -> None:
        """Once per generation, after it ended (a Registry.on_finish hook)."""
        self.record(summary)

    def record(self, s: RunSummary) -> None:
        start = s.started_ns or time.time_ns()
        timing = s.timing
        end = start + int((timing.get("total_ms") or 0) * 1e6)
        requested = s.chat.model or s.model
        answered = s.attempts[-1] if s.attempts and s.attempts[-1].error is None else None
        response_model = s.upstream_model or (answered.model if answered is not None else s.model)
        base = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": s.provider,
            "gen_ai.request.model": requested,
            "gen_ai.response.model": response_model,
        }
        error_type = s.error.code if s.error is not None else None
        usage = s.usage
        if s.trace is not None:
            self._spans(s, start, end, base, error_type, answered)
        # metrics: the client ones describe the call to the provider, the server ones this gateway's answer
        client = {**base, **_server(answered.base_url if answered is not None else None)}
        if error_type is not None:
            self.duration.record((end - start) / 1e9, {**client, "error.type": error_type})
        else:
            self.duration.record((end - start) / 1e9, client)
        if s.billable:
            self.token_usage.record(usage.get("prompt_tokens", 0), {**client, "gen_ai.token.type": "input"})
            self.token_usage.record(usage.get("completion_tokens", 0), {**client, "gen_ai.token.type": "output"})
        if s.status == "completed":
            ttft_ms = timing.get("ttft_ms")
            if ttft_ms is not None:
                self.ttft.record(ttft_ms / 1000, base)
                if s.tokens > 1:
                    self.tpot.record(((end - start) / 1e6 - ttft_ms) / 1000 / (s.tokens - 1), base)

    def _spans(
        self,
        s: RunSummary,
        start: int,
        end: int,
        base: dict[str, Any],
        error_type: str | None,
        answered: Attempt | None,
    ) -> None:
        ids = s.trace
        if ids.parent_id is not None:
            parent = SpanContext(ids.trace_id, ids.parent_id, is_remote=True, trace_flags=TraceFlags(ids.flags))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        else:
            context = Context()  # a new trace: never whatever span happens to be current
            self._ids.trace_id = ids.trace_id
        usage = s.usage
        attrs: dict[str, Any] = {
            **base,
            "gen_ai.response.id": s.stream_id,
            "gen_ai.usage.input_tokens": usage.get("prompt_tokens", 0),
            "gen_ai.usage.output_tokens": usage.get("completion_tokens", 0),
            "tokenwire.status": s.status,
        }
        params = s.chat.params
        max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
        if max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = max_tokens
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
            if params.get(name) is not None:
                attrs[f"gen_ai.request.{name}"] = params[name]
        if s.finish_reason is not None:
            attrs["gen_ai.response.finish_reasons"] = (s.finish_reason,)
        if s.cost_usd is not None:
            attrs["tokenwire.cost_usd"] = s.cost_usd
        if s.usage_estimated:
            attrs["tokenwire.usage_estimated"] = True
        if len(s.attempts) > 1:
            attrs["tokenwire.attempts"] = len(s.attempts)
        if error_type is not None:
            attrs["error.type"] = error_type
        if self.capture_content:
            attrs.update(_messages(s))
        self._ids.span_id = ids.span_id
        span = self.tracer.start_span(
            f"chat {base['gen_ai.request.model']}", context, SpanKind.SERVER, attrs, start_time=start
        )
        ttft_ms = s.timing.get("ttft_ms")
        if ttft_ms is not None:
            span.add_event("tokenwire.first_token", timestamp=start + int(ttft_ms * 1e6))
        for when in s.resumes:
            span.add_event("tokenwire.resume", timestamp=when)
        if s.status == "cancelled":
            span.add_event("tokenwire.cancel", {"tokenwire.cancel_reason": s.reason or "cancelled"}, timestamp=end)
            if s.reason == "slow_consumer":
                span.add_event("tokenwire.slow_consumer", timestamp=end)
        if s.error is not None:
            span.set_status(Status(StatusCode.ERROR, s.error.message[:500]))
        parent_ctx = trace.set_span_in_context(span)
        for i, attempt in enumerate(s.attempts):
            self._attempt_span(s, attempt, i, attempt is answered, parent_ctx, end)
        span.end(end_time=end)

    def _attempt_span(self, s: RunSummary, a: Attempt, i: int, answered: bool, context: Any, end: int) -> None:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": a.provider,
            "gen_ai.request.model": a.model,
            "tokenwire.attempt": i + 1,
            **_server(a.base_url),
        }
        error = a.error
        if answered:
            # the request that answered lasts until the stream ends, and fails with it
            attrs["gen_ai.response.model"] = s.upstream_model or a.model
            attrs["gen_ai.usage.input_tokens"] = s.usage.get("prompt_tokens", 0)
            attrs["gen_ai.usage.output_tokens"] = s.usage.get("completion_tokens", 0)
            if s.finish_reason is not None:
                attrs["gen_ai.response.finish_reasons"] = (s.finish_reason,)
            error = s.error
        a_end = end if answered or not a.end_ns else a.end_ns
        if error is not None:
            attrs["error.type"] = error.code
            if error.status is not None:
                attrs["http.response.status_code"] = error.status
        if a.span_id is not None:
            self._ids.span_id = a.span_id
        span = self.tracer.start_span(f"chat {a.model}", context, SpanKind.CLIENT, attrs, start_time=a.start_ns)
        if answered and s.status == "cancelled":
            span.add_event("tokenwire.cancel", {"tokenwire.cancel_reason": s.reason or "cancelled"}, timestamp=end)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error.message[:500]))
        span.end(end_time=a_end)

    def shutdown(self) -> None:
        """Flush and stop both providers (blocking: the exporters POST what is pending)."""
        try:
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown(timeout_millis=5000)  # a collector that is gone costs 5 s, not 30
        except Exception:
            log.exception("telemetry shutdown failed")
