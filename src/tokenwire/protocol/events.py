"""What every upstream parser produces: provider-neutral generation events.

Parsers return plain ``(kind, value)`` tuples, so the hot path allocates one
small tuple per token and compares small ints, not classes.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "CLOSE_DRAIN",
    "CLOSE_IDLE",
    "ERROR",
    "FINISH",
    "KIND_NAMES",
    "MODEL",
    "REASONING",
    "SUBPROTOCOL",
    "TOKEN",
    "TOOL_CALL",
    "USAGE",
]

TOKEN: Final = 0  #: value: str, answer text
REASONING: Final = 1  #: value: str, reasoning/thinking text, kept apart from the answer
TOOL_CALL: Final = 2  #: value: dict, a tool-call delta {index, id?, name?, arguments?}
FINISH: Final = 3  #: value: str, normalised finish reason ("stop", "length", "tool_calls", …)
USAGE: Final = 4  #: value: dict with prompt_tokens / completion_tokens (and extras)
ERROR: Final = 5  #: value: GatewayError raised inside an HTTP 200 stream
MODEL: Final = 6  #: value: str, the model id the provider says answered

KIND_NAMES: Final = ("token", "reasoning", "tool_call", "finish", "usage", "error", "model")

Event = tuple[int, Any]

# -- the WebSocket protocol v1 (server.ws, client) ------------------------------------------
SUBPROTOCOL: Final = "tokenwire.v1"
CLOSE_IDLE: Final = 4000  #: closed after idle_timeout with no application frame and no generation
CLOSE_DRAIN: Final = 4001  #: the instance is restarting: reconnect (elsewhere) and resume
