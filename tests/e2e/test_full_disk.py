"""A full disk loses nothing silently: an unstored turn says so in ``end``, usage is kept and retried
until it lands, and ``/healthz`` reports the store as degraded.

The disk is "full" for real: the gateway process runs under ``RLIMIT_FSIZE`` (``prlimit --fsize``),
so SQLite's writes past that size fail with EFBIG (SQLite's "disk I/O error"; ENOSPC on a full
filesystem is "database or disk is full": the same failed write). Then the limit is lifted on the
running process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import orjson
import pytest
from eventually import aeventually
from wsutil import WS

pytestmark = pytest.mark.hostile


def _env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TOKENWIRE_")}
    env.update({"TOKENWIRE_DB": str(db), "PYTHONUNBUFFERED": "1", "TOKENWIRE_SIMULATED_SPEED": "20"})
    return env


def _usage(db: Path, cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tokenwire", "usage", "--json"], env=_env(db), cwd=cwd, capture_output=True, check=True
    )
    return orjson.loads(out.stdout)[0]


def _serve_under_fsize(tmp_path: Path, env: dict[str, str], fsize: int) -> tuple[subprocess.Popen, int, list[bytes]]:
    """``tokenwire serve`` with its file-size soft limit at ``fsize`` bytes (the hard one unlimited)."""
    popen = subprocess.Popen(
        ["prlimit", f"--fsize={fsize}:unlimited", sys.executable, "-m", "tokenwire", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    lines: list[bytes] = []
    ready = threading.Event()
    port: list[int] = []

    def pump() -> None:
        assert popen.stdout is not None
        for line in iter(popen.stdout.readline, b""):
            lines.append(line)
            if b"listening on http://" in line and not port:
                port.append(int(line.split(b"listening on http://", 1)[1].split(b" ")[0].rsplit(b":", 1)[1]))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(20):
        popen.kill()
        raise AssertionError(b"".join(lines))
    return popen, port[0], lines


def _create_key(tmp_path: Path, env: dict[str, str]) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "tokenwire", "keys", "create", "--name", "t"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    return made.stdout.decode().split()[0]


async def test_a_full_disk_is_reported_and_usage_is_kept_until_it_lands(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    env = _env(db)
    key = _create_key(tmp_path, env)
    assert key.startswith("tw_"), key
    popen, port, lines = _serve_under_fsize(tmp_path, env, 400_000)
    auth = {"Authorization": f"Bearer {key}"}
    try:
        base = f"http://127.0.0.1:{port}"
        ends: list[dict] = []
        async with await WS.connect(base.replace("http", "ws") + "/ws/chat", headers=auth) as ws:
            for i in range(60):
                msg = {"type": "chat", "id": f"t{i}", "model": "gpt-4.1", "conversation_id": "c1"}
                await ws.send({**msg, "content": f"turn {i} " + "x" * 20_000})
                events = await ws.until_end(f"t{i}")
                ends.append(events[-1])
                if sum(1 for e in ends if e.get("stored") is False) >= 2:
                    break
            unstored = [e for e in ends if e.get("stored") is False]
            assert unstored, f"the disk never filled in {len(ends)} turns"
            assert all(e["status"] == "completed" for e in ends), ends  # the replies themselves arrived
            # SQLite names EFBIG "disk I/O error" (ENOSPC, on a full filesystem: "database or disk is full")
            assert "disk" in unstored[0]["store_error"], unstored[0]
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/healthz") as r:
                    health = await r.json()
                assert health["status"] == "degraded" and health["store"]["ok"] is False, health
                async with s.get(base + "/v1/conversations/c1", headers=auth) as r:
                    stored = (await r.json())["messages"] if r.status == 200 else []
            # what the history holds is exactly the turns whose end did not say otherwise
            assert len([m for m in stored if m["role"] == "user"]) == len(ends) - len(unstored)
            # the disk has room again: the kept usage lands, every request of them counted
            lift = ["prlimit", "--pid", str(popen.pid), "--fsize=unlimited:unlimited"]
            await asyncio.to_thread(subprocess.run, lift, check=True)
            want_tokens = sum(e["usage"]["prompt_tokens"] + e["usage"]["completion_tokens"] for e in ends)
            want_cost = sum(e["cost_usd"] for e in ends)

            def landed() -> dict | None:
                u = _usage(db, tmp_path)  # a short CLI run, polled
                return u if u["requests"] == len(ends) else None

            row = await aeventually(landed, timeout=20, interval=0.5, message="usage never written")
            assert row["prompt_tokens"] + row["completion_tokens"] == want_tokens, (row, want_tokens)
            assert abs(row["cost_usd"] - want_cost) < 1e-6, (row, want_cost)
            # and a turn stored again clears the store's state
            await ws.send({"type": "chat", "id": "after", "model": "gpt-4.1", "conversation_id": "c1", "content": "hi"})
            end = (await ws.until_end("after"))[-1]
            assert "stored" not in end, end

        async def healthy() -> dict | None:
            # usage is written behind the reply (Ledger), so the last turn's may still be in flight
            async with aiohttp.ClientSession() as s, s.get(base + "/healthz") as r:
                health = await r.json()
            return health if health["status"] == "ok" and health["store"]["ok"] is True else None

        await aeventually(healthy, timeout=20, interval=0.2, message="/healthz never went back to ok")
        assert b"Traceback" not in b"".join(lines)
    finally:
        popen.terminate()
        popen.wait(10)
