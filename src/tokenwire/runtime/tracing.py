"""The trace ids of a generation, chosen when it starts (no OpenTelemetry import here).

Spans are written once, after a generation has ended (runtime.telemetry, from its
RunSummary), but the ids they will have are needed earlier: each upstream attempt sends
its own span id to the provider in ``traceparent`` while it is being made. So the ids are
picked here, at the start, by plain code that costs nothing when tracing is off (the
registry then never calls it), and the exporter later gives its spans exactly these ids.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..protocol.tracecontext import format_traceparent, new_span_id, new_trace_id, parse_traceparent

__all__ = ["INCOMING", "TraceIds", "start_telemetry", "start_trace", "telemetry_wanted"]

#: the ``traceparent`` header of the HTTP request being handled (set by the server's middleware
#: when tracing is on): chats started while handling it are children of the caller's span. A v1
#: chat frame's own ``traceparent`` field wins over the WebSocket handshake's header.
INCOMING: ContextVar[str | None] = ContextVar("tokenwire_traceparent", default=None)


@dataclass(slots=True)
class TraceIds:
    trace_id: int
    span_id: int  #: the generation's SERVER span
    parent_id: int | None  #: the caller's span (None: the generation starts a trace)
    flags: int  #: W3C trace flags: bit 0 says the caller sampled it

    def attempt(self) -> tuple[int, dict[str, str]]:
        """A new span id for one upstream attempt and the headers that send it to the provider."""
        span_id = new_span_id()
        return span_id, {"traceparent": format_traceparent(self.trace_id, span_id, self.flags)}


def start_trace(traceparent: str | None) -> TraceIds:
    """Ids for a generation: under the caller's span if its ``traceparent`` is valid, else a new trace."""
    parent = parse_traceparent(traceparent) if traceparent else None
    if parent is None:
        return TraceIds(new_trace_id(), new_span_id(), None, 1)
    return TraceIds(parent.trace_id, new_span_id(), parent.span_id, parent.flags)


#: any of these switches OpenTelemetry export on (the SDK reads them, and the rest of OTEL_*)
ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
INSTALL_HINT = (
    "tokenwire: OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed:"
    " pip install 'tokenwire[otel]' (carrying on without traces and metrics export)"
)


def telemetry_wanted(environ: Any) -> bool:
    if str(environ.get("OTEL_SDK_DISABLED", "")).strip().lower() == "true":
        return False
    return any(environ.get(name) for name in ENDPOINT_VARS)


def start_telemetry(registry: Any, environ: Any) -> Any:
    """The gateway's runtime.telemetry.Telemetry, hooked to ``registry``; None if it is not wanted
    or the ``tokenwire[otel]`` extra is missing (then one line says how to install it)."""
    if not telemetry_wanted(environ):
        return None
    try:
        from .telemetry import Telemetry
    except ImportError as exc:
        if not (exc.name or "").startswith(("opentelemetry", "google.protobuf")):
            raise
        print(INSTALL_HINT, file=sys.stderr, flush=True)
        return None
    telemetry = Telemetry(environ)
    registry.tracing = True
    registry.on_finish.append(telemetry.on_finish)
    return telemetry
