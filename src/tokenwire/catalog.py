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
    #: USD per million prompt tokens read from the provider's prompt cache (None = the input rate)
    cached_input_per_mtok: float | None = None
    #: USD per million prompt tokens written to the cache (Anthropic; None = the input rate)
    cache_write_per_mtok: float | None = None


CATALOG: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("gpt-4.1", "openai", 1_047_576, 2.00, 8.00, "openai", "gpt-4.1", cached_input_per_mtok=0.50),
        ModelInfo(
            "claude-sonnet-4.5",
            "anthropic",
            200_000,
            3.00,
            15.00,
            "anthropic",
            "claude-sonnet-4-5",
            cached_input_per_mtok=0.30,
            cache_write_per_mtok=3.75,
        ),
        # Gemini's cache price depends on storage time as well: left at the input rate
        ModelInfo("gemini-2.5-flash", "google", 1_048_576, 0.30, 2.50, "gemini", "gemini-2.5-flash"),
        ModelInfo(
            "deepseek-v3.2", "deepseek", 128_000, 0.28, 0.42, "deepseek", "deepseek-chat", cached_input_per_mtok=0.028
        ),
    )
}
"""The built-in catalog (never mutated: a gateway's own is :func:`build_catalog`'s result)."""

MODEL_KEYS = frozenset(f.name for f in fields(ModelInfo)) - {"name"}


def build_catalog(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, ModelInfo]:
    """The built-in catalog with ``[models.NAME]`` tables applied (already validated by config)."""
    catalog = dict(CATALOG)
    for name, table in (overrides or {}).items():
        base = catalog.get(name) or ModelInfo(name, table.get("provider") or "", None, None, None)
        if "input_per_mtok" in table:  # the built-in cache rates went with the built-in input rate
            table = {"cached_input_per_mtok": None, "cache_write_per_mtok": None, **table}
        catalog[name] = replace(base, **table)
    return catalog


def cost_usd(
    model: str | None, usage: dict[str, Any] | None, catalog: dict[str, ModelInfo] | None = None
) -> float | None:
    """Cost of one reply from its usage, or ``None`` when the model has no price."""
    return price((CATALOG if catalog is None else catalog).get(model or ""), usage)


def price(info: ModelInfo | None, usage: dict[str, Any] | None) -> float | None:
    """Cost of a reply of a priced model.

    Prompt tokens served from the provider's cache (``prompt_tokens_details.cached_tokens``,
    which every parser reports in OpenAI's shape) and written to it
    (``cache_creation_tokens``, Anthropic) are priced at their own rates when the catalog
    has them; the rest of the prompt at the input rate, the completion at the output rate.
    """
    if info is None or not usage or info.input_per_mtok is None or info.output_per_mtok is None:
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    details = usage.get("prompt_tokens_details")
    cached = written = 0
    if isinstance(details, dict):
        cached = min(prompt, int(details.get("cached_tokens") or 0))
        written = min(prompt - cached, int(details.get("cache_creation_tokens") or 0))
    rate_in = info.input_per_mtok
    micro = (
        (prompt - cached - written) * rate_in
        + cached * (rate_in if info.cached_input_per_mtok is None else info.cached_input_per_mtok)
        + written * (rate_in if info.cache_write_per_mtok is None else info.cache_write_per_mtok)
        + completion * info.output_per_mtok
    )
    return round(micro / 1_000_000, 10)
