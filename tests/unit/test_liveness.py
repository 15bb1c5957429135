"""The heartbeat sweeper's rules, driven with a hand-moved clock (no sockets, no sleeping)."""

from __future__ import annotations

import asyncio

from eventually import aeventually

from tokenwire.server.liveness import Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    def __init__(self, clock: Clock, running: bool = False) -> None:
        self.last_seen = self.last_frame = clock.now
        self.pinged = False
        self.running = running
        self.log: list[str] = []

    def busy(self) -> bool:
        return self.running

    def ping(self) -> None:
        self.log.append("ping")

    def drop(self) -> None:
        self.log.append("drop")

    def close_idle(self) -> None:
        self.log.append("idle")


def make(n: int = 1, interval: float = 20.0, idle: float = 0.0, running: bool = False):
    clock = Clock()
    sessions = [FakeSession(clock, running) for _ in range(n)]
    return clock, sessions, Liveness(sessions, interval, idle, clock=clock)


async def test_tick_is_a_quarter_of_the_shortest_period_within_bounds() -> None:
    assert make(interval=20)[2].tick == 5.0
    assert make(interval=20, idle=2)[2].tick == 0.5
    assert make(interval=0.1)[2].tick == 0.05
    assert make(interval=600)[2].tick == 5.0
    assert make(interval=0, idle=0)[2].tick == 0.0  # nothing to watch: no task


async def test_a_silent_socket_is_pinged_once_then_dropped_after_two_intervals() -> None:
    clock, (s,), lv = make()
    clock.now += 19.9
    await lv.sweep()
    assert s.log == []
    clock.now += 0.1  # silent for exactly one interval
    await lv.sweep()
    assert s.log == ["ping"]
    clock.now += 10
    await lv.sweep()
    assert s.log == ["ping"]  # no second ping while we wait for the answer
    clock.now += 10  # two intervals of silence
    await lv.sweep()
    assert s.log == ["ping", "drop"]
    assert lv.stats["pings"] == 1 and lv.stats["dropped"] == 1


async def test_any_frame_counts_as_life() -> None:
    clock, (s,), lv = make()
    for _ in range(10):  # a chatty client is never pinged, never dropped
        clock.now += 15
        s.last_seen = clock.now
        s.pinged = False
        await lv.sweep()
    assert s.log == []


async def test_an_answer_already_waiting_in_the_loop_saves_the_socket() -> None:
    clock, (s,), lv = make()
    clock.now += 20
    await lv.sweep()
    clock.now += 20
    loop = asyncio.get_running_loop()

    def pong_arrives() -> None:  # the pong was read in the same loop pass as the sweep
        s.last_seen = clock.now
        s.pinged = False

    loop.call_soon(pong_arrives)
    await lv.sweep()
    assert s.log == ["ping"]


async def test_a_late_sweep_drops_nobody() -> None:
    clock, (s,), lv = make()
    clock.now += 20
    await lv.sweep()
    clock.now += 60
    await lv.sweep(starved=True)
    assert s.log == ["ping"] and lv.stats["late_sweeps"] == 1
    await lv.sweep()  # on time again: now it is judged
    assert s.log == ["ping", "drop"]


async def test_idle_means_no_application_frame_and_no_generation() -> None:
    clock, (quiet, working), lv = make(2, interval=0, idle=120)
    working.running = True
    clock.now += 119
    await lv.sweep()
    assert quiet.log == [] and working.log == []
    clock.now += 1
    quiet.last_seen = clock.now  # a pong is not activity
    await lv.sweep()
    assert quiet.log == ["idle"] and working.log == []


async def test_a_sweep_over_many_sockets_yields_to_the_loop() -> None:
    clock, sessions, lv = make(5000)
    clock.now += 20
    ticks = 0

    async def count() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)  # one loop slice (no waiting)

    counter = asyncio.ensure_future(count())
    await asyncio.sleep(0)  # let it take its first slice
    before = ticks
    await lv.sweep()
    counter.cancel()
    assert all(s.log == ["ping"] for s in sessions)
    assert ticks - before >= 2  # 5,000 sockets: at least two slices with other work in between


async def test_the_task_sweeps_on_its_own_and_stops() -> None:
    clock, (s,), lv = make(interval=0.2)
    lv.clock = lambda: clock.now  # drive silence by hand, timing by the loop
    lv.start()
    clock.now += 0.2
    await aeventually(lambda: s.log, message="the task's own sweep pings the silent socket")
    await lv.aclose()
    assert s.log == ["ping"]
