"""``tokenwire simulate``'s benchmark modes over real HTTP: ``--text``, ``pace=``, and the ``--wheel`` engine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp
import orjson
from procs import Proc


async def stream(url: str, model: str, max_tokens: int) -> tuple[list[dict], bool]:
    """The chunks of one streamed reply, and whether it ended with ``[DONE]``."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "x"}]}
    chunks: list[dict] = []
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                if data == b"[DONE]":
                    return chunks, True
                chunks.append(orjson.loads(data))
    return chunks, False


def contents(chunks: list[dict]) -> list[str]:
    return [
        c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")
    ]


def finish(chunks: list[dict]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


async def test_fast_text_batches_one_repeated_token(spawn: Callable[..., Proc]) -> None:
    sim = spawn("simulate", "--port", "0", "--fast", "--text", "tok ", "--batch", "3")
    chunks, done = await stream(sim.http, "m", 7)
    assert done and contents(chunks) == ["tok "] * 7 and finish(chunks) == ["stop"]


async def test_pace_pauses_after_each_batch(spawn: Callable[..., Proc]) -> None:
    sim = spawn("simulate", "--port", "0")
    t0 = time.monotonic()
    chunks, done = await stream(sim.http, "gpt-4.1@tps=0@batch=2@pace=100", 4)
    assert done and len(contents(chunks)) == 4
    assert time.monotonic() - t0 >= 0.2  # two writes of two tokens, 100 ms after each


async def test_wheel_engine_stamps_every_token(spawn: Callable[..., Proc]) -> None:
    sim = spawn("simulate", "--wheel", "--port", "0", "--tps", "200", "--tokens", "5", "--ttft-ms", "0")
    assert "simulate --wheel listening on" in sim.text()
    before = int(time.monotonic() * 1e6)
    chunks, done = await stream(sim.http, "gpt-4.1", 100)
    after = int(time.monotonic() * 1e6)
    tokens = contents(chunks)
    assert done and len(tokens) == 5 and finish(chunks) == ["stop"]
    arrival, sent = tokens[0].removeprefix("a").split("/")
    assert before <= int(arrival) <= int(sent) <= after
    stamps = [int(sent)] + [int(t.removeprefix("t")) for t in tokens[1:]]
    assert stamps == sorted(stamps) and stamps[-1] <= after
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    chunks, done = await stream(sim.http, "gpt-4.1@tokens=2", 100)  # the length asked on the model name
    assert done and len(contents(chunks)) == 2


def test_wheel_refuses_what_it_cannot_do() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tokenwire", "simulate", "--wheel", "--port", "0", "--fault", "429", "--text", "x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "does not take --fault, --text" in r.stderr
