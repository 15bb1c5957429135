"""W3C Trace Context ``traceparent``: parsed, checked and formatted without any library.

A caller's ``traceparent`` (an HTTP header, or a field of the v1 chat frame) names the span
a generation belongs under; the gateway sends its own on to the provider so the provider's
spans join the same trace. This is plain string work, so it lives in the I/O-free core and
the base install (without OpenTelemetry) can validate the frame field too.

Format (https://www.w3.org/TR/trace-context/#traceparent-header):
``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``; all-zero ids are invalid.
"""

from __future__ import annotations

import re
from random import getrandbits
from typing import NamedTuple

__all__ = ["TraceParent", "format_traceparent", "new_span_id", "new_trace_id", "parse_traceparent"]

# version 00 is exactly 55 characters; a later version may append fields after a "-"
_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
MAX_LEN = 512  #: longer values are refused outright (a header is not a place for a blob)


class TraceParent(NamedTuple):
    trace_id: int
    span_id: int  #: the caller's span: the parent of the gateway's
    flags: int  #: bit 0: sampled


def parse_traceparent(value: object) -> TraceParent | None:
    """The ids of a valid ``traceparent``, or None (invalid values are ignored, as the spec says)."""
    if not isinstance(value, str) or len(value) > MAX_LEN:
        return None
    m = _RE.fullmatch(value.strip())
    if m is None:
        return None
    version, trace, span, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def format_traceparent(trace_id: int, span_id: int, flags: int = 1) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"


def new_trace_id() -> int:
    return getrandbits(128) or 1


def new_span_id() -> int:
    return getrandbits(64) or 1
