"""Each pass of the cyclic garbage collector is timed into ``tokenwire_gc_pause_seconds`` while the
metrics probe runs, and not after it stops (runtime/metrics.py, ``Metrics._on_gc``)."""

from __future__ import annotations

import gc

from prometheus_client.parser import text_string_to_metric_families

from tokenwire.runtime.metrics import Metrics


class _Registry:
    runs: dict = {}  # noqa: RUF012
    stats: dict = {}  # noqa: RUF012
    store = None


async def test_full_and_young_passes_are_timed_by_generation_while_started() -> None:
    m = Metrics(_Registry(), set())  # type: ignore[arg-type]
    m.start()
    try:
        gc.collect()  # a full pass
        gc.collect(0)  # a young one
    finally:
        m.stop()
    assert m.gc_pauses[2].count >= 1 and m.gc_pauses[0].count >= 1
    assert 0 < m.gc_pauses[2].total < 1.0
    counted = {g: h.count for g, h in m.gc_pauses.items()}
    gc.collect()
    assert {g: h.count for g, h in m.gc_pauses.items()} == counted  # stopped: no callback left behind
    assert m._on_gc not in gc.callbacks
    family = {f.name: f for f in text_string_to_metric_families(m.render())}["tokenwire_gc_pause_seconds"]
    counts = {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {str(g): float(n) for g, n in counted.items()}
