"""The one vocabulary of a generation: event kinds, and protocol v1's names and close codes.

Upstream parsers produce provider-neutral ``(kind, value)`` tuples (TOKEN … MODEL), so
the hot path allocates one small tuple per token and compares small ints, not classes;
a run hands its subscribers those kinds plus START and END. The server and the client
both take the v1 subprotocol name and close codes from here.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "CLOSE_DRAIN",
    "CLOSE_IDLE",
    "END",
    "ERROR",
    "FINISH",
    "MODEL",
    "REASONING",
    "START",
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

# What a run hands its subscribers besides the answer kinds above (TOKEN, REASONING,
# TOOL_CALL, ERROR): the first and the last event of every generation.
START: Final = 10  #: value: dict, the ``start`` fields (model, provider, conversation_id, …)
END: Final = 11  #: value: dict, the ``end`` fields (status, finish_reason, usage, timing, cost_usd, …)

Event = tuple[int, Any]

# WebSocket protocol v1 (docs/protocol.md)
SUBPROTOCOL: Final = "tokenwire.v1"  #: the Sec-WebSocket-Protocol the server offers and the client asks for
CLOSE_IDLE: Final = 4000  #: close code: idle_timeout with no application frame and no generation running
CLOSE_DRAIN: Final = 4001  #: close code: the instance is draining (restart/deploy): reconnect at once and resume
