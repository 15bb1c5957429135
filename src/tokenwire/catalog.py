"""The model catalog: prices, context windows, where a model lives, and the cost of a reply.

Built in: the seed's four models. Output prices are the seed's table; input
prices are the providers' price lists (USD per million tokens, November 2026).
A config file overrides or extends it with ``[models.NAME]`` tables
(:func:`build_catalog`), so prices can be corrected without a release.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["CATALOG", "MODEL_KEYS", "ModelInfo", "build_catalog", "cost_usd", "price"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    owned_by: str
    context_window: int | None
    input_per_mtok: float | None  #: USD per million prompt tokens (None = unknown: no cost reported)
    output_per_mtok: float | None  #: USD per million completion tokens
    #: the official provider (a preset name); a deployment there uses ``upstream_model``
    provider: str = ""
    upstream_model: str = ""  #: the model's id at ``provider`` (default: its name)


CATALOG: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("gpt-4.1", "openai", 1_047_576, 2.00, 8.00, "openai", "gpt-4.1"),
        ModelInfo("claude-sonnet-4.5", "anthropic", 200_000, 3.00, 15.00, "anthropic", "claude-sonnet-4-5"),
        ModelInfo("gemini-2.5-flash", "google", 1_048_576, 0.30, 2.50, "gemini", "gemini-2.5-flash"),
        ModelInfo("deepseek-v3.2", "deepseek", 128_000, 0.28, 0.42, "deepseek", "deepseek-chat"),
    )
}
"""The built-in catalog (never mutated: a gateway's own is :func:`build_catalog`'s result)."""

MODEL_KEYS = frozenset(f.name for f in fields(ModelInfo)) - {"name"}


def build_catalog(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, ModelInfo]:
    """The built-in catalog with ``[models.NAME]`` tables applied (already validated by config)."""
    catalog = dict(CATALOG)
    for name, table in (overrides or {}).items():
        base = catalog.get(name) or ModelInfo(name, table.get("provider") or "", None, None, None)
        catalog[name] = replace(base, **table)
    return catalog


def cost_usd(
    model: str | None, usage: dict[str, Any] | None, catalog: dict[str, ModelInfo] | None = None
) -> float | None:
    """Cost of one reply from its usage, or ``None`` when the model has no price."""
    return price((CATALOG if catalog is None else catalog).get(model or ""), usage)


def price(info: ModelInfo | None, usage: dict[str, Any] | None) -> float | None:
    """Cost of a reply of a priced model (prompt and completion tokens at the catalog's rates)."""
    if info is None or not usage or info.input_per_mtok is None or info.output_per_mtok is None:
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    return round((prompt * info.input_per_mtok + completion * info.output_per_mtok) / 1_000_000, 10)
