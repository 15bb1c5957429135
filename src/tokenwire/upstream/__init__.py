"""Model providers: one module per wire format.

``NATIVE`` maps a provider kind other than "openai"/"simulated" to its factory
``(name, base_url, api_key, session, headers) -> Provider``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NATIVE: dict[str, Callable[..., Any]] = {}


def _register() -> None:
    """Native wire formats register here (imported lazily: they import this package)."""
    from .anthropic import AnthropicProvider
    from .gemini import GeminiProvider

    NATIVE.setdefault("anthropic", AnthropicProvider)
    NATIVE.setdefault("gemini", GeminiProvider)


_register()
