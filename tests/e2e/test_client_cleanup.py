"""Clean-up: 1,000 clients opened and closed leave no task, socket or callback behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import Callable

import aiohttp
from eventually import aeventually

import tokenwire


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_sessions() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed)


async def settle(clean: Callable[[], bool]) -> None:
    """Let closing tasks, sockets and sessions finish until ``clean()`` (up to 5 s): the asserts after
    say what is left."""

    def collected_and_clean() -> bool:
        gc.collect()
        return clean()

    with contextlib.suppress(AssertionError):
        await aeventually(collected_and_clean, timeout=5)


async def generations(gateway) -> int:
    async with aiohttp.ClientSession() as http, http.get(gateway.http + "/healthz") as r:
        return (await r.json())["generations"]


async def test_open_and_close_1000_clients_leaves_nothing_behind(gateway) -> None:
    async with tokenwire.AsyncClient(gateway.ws) as warm:  # first-use costs (resolver threads, imports)
        await warm.complete("warm up", max_tokens=3)
    await settle(lambda: len(asyncio.all_tasks()) == 1 and open_sessions() == 0)  # only this test's task
    tasks0, fds0 = len(asyncio.all_tasks()), open_fds()
    loop = asyncio.get_running_loop()
    timers0 = len(loop._scheduled)  # pending call_later callbacks (private, but the honest count)
    problems: list[str] = []  # "Unclosed client session", "Task was destroyed but it is pending", …
    loop.set_exception_handler(lambda _loop, ctx: problems.append(str(ctx.get("message"))))

    for i in range(1000):
        async with tokenwire.AsyncClient(gateway.ws) as client:
            if i % 50 == 0:
                r = await client.complete(f"c{i}", max_tokens=3)
                assert r.text.startswith(f"You said: c{i}")
            elif i % 50 == 1:  # left early: the cancel goes out, nothing lingers
                async for _ in client.stream("leave early", max_tokens=20000):
                    break
            elif i % 50 == 2:  # closed with a reply still running
                s = client.stream("close mid-reply", max_tokens=20000)
                await s.__anext__()
        if i % 100 == 99:
            await settle(lambda: len(asyncio.all_tasks()) <= tasks0 + 2)
            assert len(asyncio.all_tasks()) <= tasks0 + 2, i  # no growth along the way

    await settle(
        lambda: (
            len(asyncio.all_tasks()) == tasks0
            and open_fds() == fds0
            and open_sessions() == 0
            and len(loop._scheduled) <= timers0
        )
    )
    loop.set_exception_handler(None)
    assert problems == []
    assert len(asyncio.all_tasks()) == tasks0
    assert open_fds() == fds0
    assert open_sessions() == 0
    assert len(loop._scheduled) <= timers0

    # those replies would run for ~24 s: they were cancelled on the server, not left running
    async def none_running() -> bool:
        return not await generations(gateway)

    await aeventually(none_running, interval=0.05, message="the abandoned replies were cancelled on the server")


def test_sync_client_close_leaves_no_thread_or_fd(gateway) -> None:
    import threading

    def run() -> None:
        with tokenwire.Client(gateway.ws) as c:
            assert c.complete("sync", max_tokens=3).text.startswith("You said: sync")
            for _ in c.stream("abandon me", max_tokens=300):
                break

    run()  # warm-up
    gc.collect()
    threads0, fds0 = threading.active_count(), open_fds()
    for _ in range(50):
        run()
    gc.collect()
    assert threading.active_count() == threads0, [t.name for t in threading.enumerate()]
    assert open_fds() == fds0
