"""How a serving process sets CPython's cyclic garbage collector once it has started.

A gateway's heap is mostly long-lived: every open socket holds ~200 tracked objects (its
request, WebSocket, session, tasks and coroutines), so with 1,000 sockets a *full* collection
walks ~200,000 objects and stops the event loop for ~100 ms on the reference VM: every stream's
next token is late by that much. CPython starts a full pass after ten passes of the middle
generation once enough objects were promoted since the last one, and sockets and replies live
for seconds, long enough to be promoted: at 1,000 paced streams a full pass came every ~4 s
(120-180 ms each), although there is nothing for it to find, since the gateway leaves no
reference cycles (``tests/e2e/test_no_cyclic_garbage.py``).

The "tuned" policy (1) collects once and freezes what start-up built (modules, classes, the
catalog) out of every later pass, and (2) starts a full pass after 100 middle passes instead of
10. (Frozen objects are still freed by reference counting when dropped; only a cycle among
them would stay until exit.) The young generations keep their defaults: a larger first
threshold made the middle passes themselves take 20-140 ms. "default" leaves CPython's
collector as it is. Figures: docs/benchmarks-load.md, "Garbage collection".
"""

from __future__ import annotations

import gc

__all__ = ["FULL_PASS_EVERY", "apply_gc_policy"]

FULL_PASS_EVERY = 100  #: middle-generation passes per full pass under "tuned" (CPython: 10)


def apply_gc_policy(policy: str) -> None:
    """Set the collector for a process that has finished starting (call once, then serve)."""
    if policy != "tuned":
        return
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_PASS_EVERY)
