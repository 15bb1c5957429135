"""The built-in model catalog: prices, context windows, and the cost of a reply.

Output prices are the seed's table; input prices are the providers' price
lists (USD per million tokens, November 2026).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CATALOG", "ModelInfo", "cost_usd"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    owned_by: str
    context_window: int
    input_per_mtok: float
    output_per_mtok: float


CATALOG: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("gpt-4.1", "openai", 1_047_576, 2.00, 8.00),
        ModelInfo("claude-sonnet-4.5", "anthropic", 200_000, 3.00, 15.00),
        ModelInfo("gemini-2.5-flash", "google", 1_048_576, 0.30, 2.50),
        ModelInfo("deepseek-v3.2", "deepseek", 128_000, 0.28, 0.42),
    )
}


def cost_usd(model: str | None, usage: dict[str, Any] | None) -> float | None:
    """Cost of one reply from its usage, or ``None`` when the model has no price."""
    info = CATALOG.get(model or "")
    if info is None or not usage:
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    return round((prompt * info.input_per_mtok + completion * info.output_per_mtok) / 1_000_000, 10)
