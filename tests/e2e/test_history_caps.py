"""A stored conversation sends only its newest turns that fit; a turn too big alone is a 400."""

from __future__ import annotations

import aiohttp
import pytest

pytestmark = pytest.mark.hostile


async def test_history_is_capped_by_messages_and_bytes(spawn, tmp_path) -> None:
    gw = spawn(
        "serve",
        "--port",
        "0",
        env={
            "TOKENWIRE_DB": str(tmp_path / "gw.db"),
            "TOKENWIRE_SIMULATED_SPEED": "100",
            "TOKENWIRE_MAX_HISTORY_MESSAGES": "6",
            "TOKENWIRE_MAX_HISTORY_BYTES": "200000",
        },
    )
    prompts = []
    async with aiohttp.ClientSession() as s:
        for i in range(12):
            body = {
                "model": "gpt-4.1",
                "conversation_id": "long-chat",
                "messages": [{"role": "user", "content": f"turn {i} " + "x" * 40_000}],
                "max_tokens": 3,
            }
            async with s.post(gw.http + "/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()
                prompts.append((await r.json())["usage"]["prompt_tokens"])
        # at most 6 messages / 200 KB are sent: the prompt stops growing
        assert max(prompts) <= 200_000 // 4 + 100, prompts
        assert prompts[-1] == prompts[-2] and prompts[-1] < 6 * 10_000 + 100, prompts
        body = {
            "model": "gpt-4.1",
            "conversation_id": "long-chat",
            "messages": [{"role": "user", "content": "y" * 300_000}],
        }
        async with s.post(gw.http + "/v1/chat/completions", json=body) as r:
            assert r.status == 400
            err = (await r.json())["error"]
            assert "max_history_bytes" in err["message"], err
