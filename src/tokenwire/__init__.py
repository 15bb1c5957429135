"""tokenwire: stream LLM chat tokens to clients over WebSocket and SSE."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
