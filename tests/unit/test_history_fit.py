"""The truncation rule of a stored conversation's history (runtime.history.fit_history)."""

from __future__ import annotations

import pytest

from tokenwire.protocol.errors import GatewayError
from tokenwire.runtime.history import fit_history

SYSTEM = {"role": "system", "content": "be brief"}


def turns(n: int, size: int = 10) -> list[dict]:
    out = []
    for i in range(n):
        out += [{"role": "user", "content": f"q{i}".ljust(size)}, {"role": "assistant", "content": f"a{i}".ljust(size)}]
    return out


def test_no_limits_keeps_everything() -> None:
    past, new = [SYSTEM, *turns(3)], [{"role": "user", "content": "now"}]
    assert fit_history(past, new) == past + new


def test_oldest_turns_go_first_never_the_system_prompt() -> None:
    past, new = [SYSTEM, *turns(10)], [{"role": "user", "content": "now"}]
    out = fit_history(past, new, max_messages=6)
    assert len(out) <= 6 and out[0] == SYSTEM and out[-1] == new[0]
    assert out[1]["role"] == "user" and out[1:-1] == past[-len(out) + 2 :]


def test_bytes_and_tokens_cap_too() -> None:
    past, new = [SYSTEM, *turns(50, size=1000)], [{"role": "user", "content": "now"}]
    by_bytes = fit_history(past, new, max_bytes=10_500)
    assert sum(len(m["content"]) for m in by_bytes) <= 10_500 and by_bytes[0] == SYSTEM
    by_tokens = fit_history(past, new, max_tokens=2_600)
    assert sum(len(m["content"]) for m in by_tokens) // 4 <= 2_600 and by_tokens[0] == SYSTEM
    assert len(by_tokens) < len(past)


def test_a_turn_over_the_limit_by_itself_is_a_clear_error() -> None:
    with pytest.raises(GatewayError) as info:
        fit_history([SYSTEM, *turns(2)], [{"role": "user", "content": "x" * 5000}], max_bytes=1000)
    assert info.value.code == "bad_request" and "max_history_bytes" in info.value.message
    with pytest.raises(GatewayError) as info:
        fit_history([], [{"role": "user", "content": "x"}] * 3, max_messages=2)
    assert "max_history_messages" in info.value.message
