"""What every upstream parser produces: provider-neutral generation events.

Parsers return plain ``(kind, value)`` tuples, so the hot path allocates one
small tuple per token and compares small ints, not classes.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["ERROR", "FINISH", "MODEL", "REASONING", "TOKEN", "TOOL_CALL", "USAGE"]

TOKEN: Final = 0  #: value: str, answer text
REASONING: Final = 1  #: value: str, reasoning/thinking text, kept apart from the answer
TOOL_CALL: Final = 2  #: value: dict, a tool-call delta {index, id?, name?, arguments?}
FINISH: Final = 3  #: value: str, normalised finish reason ("stop", "length", "tool_calls", …)
USAGE: Final = 4  #: value: dict with prompt_tokens / completion_tokens (and extras)
ERROR: Final = 5  #: value: GatewayError raised inside an HTTP 200 stream
MODEL: Final = 6  #: value: str, the model id the provider says answered

Event = tuple[int, Any]
