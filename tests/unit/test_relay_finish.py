"""A generation that is finishing (reply being stored, ``end`` going out) cannot be cut short."""

from __future__ import annotations

import asyncio

import orjson

from tokenwire.config import load_settings
from tokenwire.protocol import frames as fr
from tokenwire.runtime.gateway import Gateway


class Collector:
    def __init__(self) -> None:
        self.kinds: list[int] = []

    def send(self, rest: bytes, kind: int, value: object) -> None:
        self.kinds.append(kind)


async def test_a_cancel_while_the_reply_is_being_stored_changes_nothing() -> None:
    settings = load_settings(None, overrides={"host": "127.0.0.1", "port": 0, "db_path": ":memory:"})
    settings.simulated_speed = 50
    gw = Gateway(settings)
    storing, stored = asyncio.Event(), asyncio.Event()
    real_append = gw.store.append

    async def slow_append(*args, **kwargs):  # the store is slow: it finishes only after the cancel landed
        storing.set()
        await stored.wait()
        return await real_append(*args, **kwargs)

    gw.registry.store.append = slow_append  # type: ignore[method-assign]
    frame = {"type": "chat", "id": "a", "model": "gpt-4.1", "content": "hi", "conversation_id": "c1"}
    chat = fr.parse_frame(orjson.dumps({**frame, "params": {"max_tokens": 5}}).decode(), gw.limits, 0)
    run = await gw.registry.begin(chat, gw.router.resolve(chat.model), chat.conversation_id, False)
    sub = Collector()
    run.subscribe(sub)
    try:
        await asyncio.wait_for(storing.wait(), 10)
        run.cancel("client_gone")  # e.g. the tab closed just as the reply completed
        stored.set()
        await asyncio.wait_for(run.ended.wait(), 5)
        assert run.gen.status == "completed"
        assert [m["role"] for m in await gw.store.history("c1")] == ["user", "assistant"]
        assert "c1" not in gw.registry.busy_conversations
        assert sub.kinds[-1] == 11  # END went out
    finally:
        await gw.aclose()
