"""What every dialect provides: an encoder of a run's events, and its error shape.

A run hands each subscriber every event as ``(rest, kind, value)``: ``rest`` is the
event's protocol-v1 encoding without its socket-local id (see
``protocol.stream.Generation``), ``kind`` one of ``protocol.events``' kinds (START,
TOKEN, REASONING, TOOL_CALL, ERROR, END), ``value`` the event's own value (the text,
the tool-call delta, the GatewayError, the start/end fields). An encoder returns
the bytes to send for it, or None to send nothing. It never does I/O: the server
writes the bytes to a socket, an SSE response or a buffer.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Encoder"]


class Encoder(Protocol):
    def encode(self, rest: bytes, kind: int, value: Any) -> bytes | None:
        """The bytes one event becomes in this dialect (None: nothing to send)."""
        ...
