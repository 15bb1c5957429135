"""``tokenwire serve --workers N``: N processes on one port, streams shared over a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import orjson
from eventually import aeventually
from redisutil import new_prefix
from secutil import create_key
from wsutil import connect_worker as connect
from wsutil import text_of

import tokenwire
from tokenwire.simulate.reply import reply_tokens


def workers_env(sim: Any, redis_url: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": sim.http + "/v1",
        "TOKENWIRE_REDIS_URL": redis_url,
        "TOKENWIRE_REDIS_PREFIX": new_prefix(),
        "TOKENWIRE_DB": ":memory:",
    }


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def test_more_than_one_worker_needs_redis(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    r = subprocess.run(
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--workers", "2", "--db", ":memory:"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "workers = 2 needs redis_url (TOKENWIRE_REDIS_URL)" in r.stderr


async def test_connections_spread_over_workers_and_streams_resume_on_another(spawn, sim, redis_url) -> None:
    gw = spawn("serve", "--port", "0", "--workers", "2", env=workers_env(sim, redis_url), timeout=40)
    assert len(children(gw.pid)) == 2

    # new connections reach both workers (the kernel hashes each connection to one)
    pids, workers = set(), set()
    async with aiohttp.ClientSession() as s:
        for _ in range(24):
            async with s.get(gw.http + "/healthz", headers={"Connection": "close"}) as r:
                body = await r.json()
            pids.add(body["pid"])
            workers.add(body["worker"])
    assert workers == {0, 1} and pids == set(children(gw.pid))

    # a stream started on one worker, cut, and resumed through the other: every token once
    sid = uuid.uuid4().hex
    prompt, n = "resume me on the other worker", 120
    ws, first = await connect(gw.ws)
    frame = {"type": "chat", "id": "c", "model": "gpt-4.1@tps=100", "content": prompt, "stream_id": sid}
    await ws.send({**frame, "params": {"max_tokens": n}})
    got = [await ws.recv() for _ in range(25)]
    await ws.ws.close()
    await ws.session.close()
    for _ in range(60):
        ws, other = await connect(gw.ws)
        if other != first:
            break
        await ws.close()
    assert other != first, "60 connections all reached the same worker"
    async with ws:
        await ws.send({"type": "attach", "id": "again", "stream_id": sid, "last_seq": got[-1]["seq"]})
        rest = await ws.until_end("again")
    events = got + rest
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "end" and events[-1]["status"] == "completed"
    assert text_of(events) == "".join(reply_tokens([{"role": "user", "content": prompt}], n))


def alive(pids: list[int]) -> bool:
    return any(os.path.exists(f"/proc/{p}") for p in pids)


async def test_sigterm_drains_every_worker(spawn, sim, redis_url) -> None:
    gw = spawn("serve", "--port", "0", "--workers", "2", env=workers_env(sim, redis_url), timeout=40)
    kids = children(gw.pid)
    assert len(kids) == 2
    t0 = time.monotonic()
    assert gw.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - t0 < 15
    await aeventually(lambda: not alive(kids), interval=0.1, message="a worker outlived the supervisor")
    assert not alive(kids), "a worker outlived the supervisor"
    assert "draining" in gw.text()


async def test_a_worker_that_dies_is_replaced(spawn, sim, redis_url) -> None:
    gw = spawn("serve", "--port", "0", "--workers", "2", env=workers_env(sim, redis_url), timeout=40)
    victim, survivor = children(gw.pid)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> list[int] | None:
        now = children(gw.pid)
        return now if len(now) == 2 and victim not in now else None

    now = await aeventually(replaced, timeout=10, interval=0.1, message="the killed worker is replaced")
    assert survivor in now and victim not in now and len(now) == 2, now
    # printed before the new worker starts, but read from the supervisor's pipe by another thread
    await aeventually(lambda: "restarting worker" in gw.text(), timeout=10, interval=0.05, message="said so")
    async with aiohttp.ClientSession() as s:  # and the port still answers
        async with s.get(gw.http + "/healthz") as r:
            assert r.status == 200


def test_a_bad_event_loop_is_refused_before_any_worker_starts(tmp_path, redis_url) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "uvloop.py").write_text('raise ImportError("uvloop is broken here (test)")\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    env |= {
        "PYTHONPATH": str(fake),
        "TOKENWIRE_EVENT_LOOP": "uvloop",
        "TOKENWIRE_REDIS_URL": redis_url,
        "TOKENWIRE_REDIS_PREFIX": new_prefix(),
    }
    r = subprocess.run(
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--workers", "2", "--db", ":memory:"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "configuration error: event_loop = uvloop, but uvloop is not installed" in r.stderr
    assert "Traceback" not in r.stderr


def test_stopped_right_after_start_every_time(sim, redis_url, tmp_path) -> None:
    """SIGTERM the moment the supervisor says it listens: each time it drains and exits.

    (A cancel swallowed inside the Redis client once left a worker's heartbeat running for
    ever: 1 start-stop in 10-15 hung.)"""
    from procs import start

    for _ in range(6):
        gw = start(
            ["serve", "--port", "0", "--workers", "2"], env=workers_env(sim, redis_url), timeout=40, cwd=tmp_path
        )
        kids = children(gw.pid)
        t0 = time.monotonic()
        code = gw.stop(signal.SIGTERM, timeout=15)
        assert code == 0, f"exit {code} after {time.monotonic() - t0:.1f} s:\n{gw.text()}"
        assert not alive(kids)


async def test_metrics_add_up_every_worker(spawn, sim, redis_url) -> None:
    """Whichever worker a scrape reaches, /metrics describes the whole gateway."""
    gw = spawn("serve", "--port", "0", "--workers", "2", env=workers_env(sim, redis_url), timeout=40)
    seen_workers: set[str] = set()
    n = 0
    while n < 8 or len(seen_workers) < 2:  # sockets spread over both workers; each streams a reply
        assert n < 60, "60 sockets all reached one worker"
        ws, worker = await connect(gw.ws)
        seen_workers.add(worker)
        async with ws:
            await ws.send({"type": "chat", "id": f"m{n}", "model": "gpt-4.1@tps=0", "content": "count me"})
            events = await ws.until_end(f"m{n}")
            assert events[-1]["status"] == "completed"
        n += 1
    tokens = sum(1 for e in events if e["type"] == "token")  # every reply is the same length
    values = []
    async with aiohttp.ClientSession() as s:
        for _ in range(6):  # each scrape lands on either worker
            async with s.get(gw.http + "/metrics", headers={"Connection": "close"}) as r:
                text = await r.text()
            sample = {
                line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
            values.append(
                (
                    sample["tokenwire_ws_connections_total"],
                    sum(v for k, v in sample.items() if k.startswith("tokenwire_tokens_relayed_total")),
                    sample[f'tokenwire_build_info{{version="{tokenwire.__version__}"}}'],
                )
            )
            assert text.count("# TYPE tokenwire_ws_connections_total counter") == 1
        async with s.get(gw.http + "/metrics?scope=worker") as r:  # one worker's own figures
            own = await r.text()
    assert set(values) == {(float(n), float(n * tokens), 1.0)}, values
    assert f"tokenwire_ws_connections_total {n}\n" not in own  # a single worker saw fewer


async def test_the_admin_view_adds_up_every_worker(spawn, sim, redis_url, tmp_path) -> None:
    """Whichever worker an admin reaches, the live view, the latest generations and any generation's
    detail are the whole gateway's; the routes the workers ask each other on are not a client's."""
    db = tmp_path / "gw.db"
    admin, alice = create_key(db, "ops", "--admin"), create_key(db, "alice")
    env = {**workers_env(sim, redis_url), "TOKENWIRE_DB": str(db)}
    gw = spawn("serve", "--port", "0", "--workers", "2", env=env, timeout=40)
    n = 16  # each on a new connection: the kernel spreads them over both workers
    ids = []
    async with aiohttp.ClientSession(headers={"Connection": "close"}) as s:
        for i in range(n):
            body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"admin view {i}"}], "max_tokens": 5}
            async with s.post(
                gw.http + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {alice}"}
            ) as r:
                assert r.status == 200, await r.text()
                ids.append((await r.json())["id"])
        auth = {"Authorization": f"Bearer {admin}"}

        async def stats() -> dict:
            async with s.get(gw.http + "/admin/api/stats", headers=auth) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        for _ in range(4):  # each call lands on either worker, and says the same
            snap = await stats()
            assert snap["generations_total"] == n and snap["workers_missing"] == 0
            per_worker = {w["worker"]: w["generations_total"] for w in snap["workers"]}
            assert set(per_worker) == {0, 1} and sum(per_worker.values()) == n and min(per_worker.values()) > 0
            assert sorted("chatcmpl-" + g["stream_id"] for g in snap["latest"]) == sorted(ids)
            assert snap["ended_in_window"] == n and snap["models"][0]["generations"] == n
        async with s.get(gw.http + "/admin/api/generations?limit=50", headers=auth) as r:
            listed = (await r.json())["data"]
        assert sorted("chatcmpl-" + g["stream_id"] for g in listed) == sorted(ids)
        assert [g["ended"] for g in listed] == sorted((g["ended"] for g in listed), reverse=True)  # newest first
        for cid in ids:  # every generation's detail, from whichever worker ran it
            async with s.get(gw.http + f"/admin/api/generations/{cid}", headers=auth) as r:
                assert r.status == 200, await r.text()
                detail = await r.json()
            assert "chatcmpl-" + detail["stream_id"] == cid and detail["status"] == "completed"
        async with s.get(gw.http + "/admin/api/generations/s_nowhere", headers=auth) as r:
            assert r.status == 404 and "each of the 2 workers" in (await r.json())["error"]["message"]
        async with s.get(gw.http + "/admin/api/live", headers=auth) as r:  # the live stream too
            line = b""
            while not line.startswith(b"data: "):
                line = await asyncio.wait_for(r.content.readline(), 10)
        live = orjson.loads(line[6:])
        assert live["generations_total"] == n and len(live["latest"]) == n
        for path in ("/admin/api/worker/state", f"/admin/api/worker/generations/{ids[0]}"):
            async with s.get(gw.http + path, headers=auth) as r:
                assert r.status == 404  # only for the workers, over their private sockets
