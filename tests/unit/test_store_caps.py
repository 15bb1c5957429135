"""What a stored conversation keeps (store.base.plan_drop, StoreCaps) and the memory store's caps and expiry."""

from __future__ import annotations

from tokenwire.store.base import StoreCaps, plan_drop
from tokenwire.store.memory import MemoryConversationStore


def turns(*roles: str, size: int = 10) -> list[tuple[str, int]]:
    return [(r, size) for r in roles]


def test_nothing_is_dropped_within_the_caps_or_without_caps() -> None:
    t = turns("user", "assistant", "user", "assistant")
    assert plan_drop(t, 2, max_messages=4, max_bytes=40) == 0
    assert plan_drop(t * 100, 2) == 0


def test_the_oldest_whole_turns_go_first_by_messages() -> None:
    t = turns("user", "assistant", "user", "assistant", "user", "assistant")
    assert plan_drop(t, 2, max_messages=4) == 2
    assert plan_drop(t, 2, max_messages=3) == 4  # one answer alone would lead: its question is gone, so it goes


def test_bytes_are_counted_and_an_answer_never_leads() -> None:
    t = [("user", 100), ("assistant", 5), ("user", 10), ("assistant", 10)]
    assert plan_drop(t, 2, max_bytes=30) == 2
    assert plan_drop(t, 2, max_bytes=120) == 2  # 125 > 120: the user goes, then its answer


def test_the_newest_turn_is_kept_even_over_a_cap() -> None:
    t = turns("user", "assistant", "user", "assistant", "assistant", "assistant")
    assert plan_drop(t, 4, max_messages=2) == 2
    assert plan_drop(turns("user", "assistant"), 2, max_messages=1, max_bytes=1) == 0


def test_tool_turns_are_dropped_with_their_question() -> None:
    t = turns("user", "assistant", "tool", "assistant", "user", "assistant")
    assert plan_drop(t, 2, max_messages=5) == 4


def test_cutoff() -> None:
    assert StoreCaps().cutoff(1000.0) == float("-inf")
    assert StoreCaps(ttl=60).cutoff(1000.0) == 940.0


async def test_memory_store_caps_and_expiry(monkeypatch) -> None:
    import tokenwire.store.base as base
    import tokenwire.store.memory as memory

    now = [1000.0]
    monkeypatch.setattr(memory.time, "time", lambda: now[0])
    monkeypatch.setattr(base.time, "time", lambda: now[0])
    s = MemoryConversationStore(StoreCaps(max_messages=2, ttl=60))
    s._start_sweeper = lambda: None  # no event-loop task in a unit test: sweep() is called below
    await s.append("k/a/c", [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}], "sys")
    assert await s.append("k/a/c", [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]) == 2
    assert [m["content"] for m in await s.history("k/a/c")] == ["sys", "q2", "a2"]
    await s.append("k/a/d", [{"role": "user", "content": "x"}])
    assert await s.count("k/a/") == 2
    now[0] += 30
    await s.append("k/a/d", [{"role": "assistant", "content": "y"}])  # refreshed
    now[0] += 31
    assert await s.count("k/a/") == 1
    assert await s.history("k/a/c") == []
    now[0] += 60
    assert await s.sweep() == 1
    assert s._updated == {}
