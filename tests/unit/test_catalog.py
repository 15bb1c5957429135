"""Prices of replies: prompt, completion, and prompt-cache reads and writes at their own rates."""

from __future__ import annotations

import pytest

from tokenwire.catalog import CATALOG, build_catalog, price


def usage(prompt: int, completion: int, cached: int = 0, written: int = 0) -> dict:
    u: dict = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached or written:
        u["prompt_tokens_details"] = {"cached_tokens": cached, "cache_creation_tokens": written}
    return u


def test_plain_prompt_and_completion() -> None:
    assert price(CATALOG["claude-sonnet-4.5"], usage(17, 10)) == pytest.approx(17 * 3e-6 + 10 * 15e-6)


def test_cached_prompt_tokens_cost_the_cache_rate() -> None:
    # gpt-4.1: $2 input, $0.50 cached input, $8 output per million
    assert price(CATALOG["gpt-4.1"], usage(1000, 100, cached=800)) == pytest.approx(
        (200 * 2.0 + 800 * 0.5 + 100 * 8.0) / 1e6
    )
    # Claude: cache reads $0.30, cache writes $3.75
    assert price(CATALOG["claude-sonnet-4.5"], usage(1000, 100, cached=600, written=300)) == pytest.approx(
        (100 * 3.0 + 600 * 0.30 + 300 * 3.75 + 100 * 15.0) / 1e6
    )
    # DeepSeek: cache hits at a tenth
    assert price(CATALOG["deepseek-v3.2"], usage(1000, 0, cached=1000)) == pytest.approx(1000 * 0.028 / 1e6)


def test_no_cache_rate_means_the_input_rate_and_odd_details_are_bounded() -> None:
    gemini = CATALOG["gemini-2.5-flash"]
    assert price(gemini, usage(1000, 10, cached=900)) == price(gemini, usage(1000, 10))
    # a provider reporting more cached tokens than prompt tokens never makes a cost negative
    assert price(CATALOG["gpt-4.1"], usage(10, 0, cached=50)) == pytest.approx(10 * 0.5 / 1e6)
    assert price(CATALOG["gpt-4.1"], {"prompt_tokens": 10, "prompt_tokens_details": None}) == pytest.approx(20e-6)


def test_a_config_file_sets_cache_rates() -> None:
    catalog = build_catalog({"gemini-2.5-flash": {"cached_input_per_mtok": 0.03}})
    assert price(catalog["gemini-2.5-flash"], usage(1000, 0, cached=1000)) == pytest.approx(30e-6)
    assert CATALOG["gemini-2.5-flash"].cached_input_per_mtok is None  # the built-in one is not touched


def test_overriding_the_input_rate_drops_the_built_in_cache_rates() -> None:
    catalog = build_catalog({"gpt-4.1": {"input_per_mtok": 10.0}})
    assert catalog["gpt-4.1"].cached_input_per_mtok is None  # cached tokens at the new input rate
    both = build_catalog({"gpt-4.1": {"input_per_mtok": 10.0, "cached_input_per_mtok": 2.5}})
    assert both["gpt-4.1"].cached_input_per_mtok == 2.5
