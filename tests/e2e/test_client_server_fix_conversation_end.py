"""Server fix: a conversation is free (and its reply stored) by the time `end` is sent.

Before, the reply was stored and the conversation released only after `end` went out, so a
client sending its next turn the moment it saw `end` could get `conversation_busy`.
"""

from __future__ import annotations

import asyncio

import aiohttp
from wsutil import WS, text_of


async def back_to_back(gateway, conv: str, turns: int) -> list[str]:
    answers = []
    async with await WS.connect(gateway.ws) as ws:
        for i in range(turns):
            frame = {"type": "chat", "id": f"t{i}", "content": f"turn {i}", "conversation_id": conv}
            await ws.send({**frame, "params": {"max_tokens": 3}})
            events = []
            async with asyncio.timeout(20):
                while not events or events[-1]["type"] not in ("end", "error"):
                    event = await ws.recv()
                    if event.get("id") == f"t{i}":
                        events.append(event)
            assert events[-1]["type"] == "end", events[-1]  # not conversation_busy
            answers.append(text_of(events))
    return answers


async def test_next_turn_right_after_end_is_never_busy(gateway) -> None:
    # 20 conversations at once keep the store busy, which widens the window the old order left open
    results = await asyncio.gather(*(back_to_back(gateway, f"conv-b2b-{c}", 15) for c in range(20)))
    async with aiohttp.ClientSession() as http:
        for c, answers in enumerate(results):
            async with http.get(f"{gateway.http}/v1/conversations/conv-b2b-{c}") as r:
                stored = (await r.json())["messages"]
            assert [m["content"] for m in stored if m["role"] == "assistant"] == answers


async def test_history_holds_the_reply_when_end_arrives(gateway) -> None:
    async with await WS.connect(gateway.ws) as ws, aiohttp.ClientSession() as http:
        for i in range(10):
            conv = f"conv-read-{i}"
            await ws.send({"type": "chat", "id": "h", "content": "hi", "conversation_id": conv})
            answer = text_of(await ws.until_end("h", timeout=10))
            async with http.get(f"{gateway.http}/v1/conversations/{conv}") as r:
                stored = (await r.json())["messages"]
            assert stored[-1] == {"role": "assistant", "content": answer}
