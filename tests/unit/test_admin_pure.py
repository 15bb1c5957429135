"""The admin dashboard's pure parts: windows, usage sums, the last generations and the live snapshot,
the key store's admin flag, edits, usage rows and the migration of an older key table."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire.auth.keys import (
    USAGE_BUCKET,
    MemoryKeyStore,
    SQLiteKeyStore,
    bucket_of,
    new_record,
)
from tokenwire.auth.usage import POINTS, parse_window, summarize
from tokenwire.bench.run import percentile  # the exact nearest-rank percentile: the reference
from tokenwire.protocol.errors import GatewayError
from tokenwire.protocol.frames import Chat
from tokenwire.runtime.recent import Recent, Tally, detail, hist_percentile, live_view, merge_exports
from tokenwire.runtime.summary import RunSummary

NOW = 1_800_000_030.0  # 30 s into a minute


# -- windows and usage ----------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800), ("60s", 60)])
def test_a_window_is_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1y", "-1h", "1.5h", "30s", "91d", "1h; drop", None])
def test_a_bad_window_says_what_is_accepted(text: str | None) -> None:
    with pytest.raises(ValueError, match=r"window must be a number and a unit .* e\.g\. 15m, 1h"):
        parse_window(text)


def test_usage_is_summed_per_key_and_per_model_within_the_window_only() -> None:
    a, _ = new_record("alice")
    b, _ = new_record("bob")
    minute = bucket_of(NOW)
    rows = [
        (minute - 7200, a.id, "gpt-4.1", 9, 900, 900, 9.0),  # two hours ago: outside a 1h window
        (minute - 600, a.id, "gpt-4.1", 2, 10, 20, 0.25),
        (minute - 60, a.id, "claude-sonnet-4.5", 1, 5, 5, 0.5),
        (minute, b.id, "gpt-4.1", 3, 30, 30, 0.125),
        (minute, "k_gone", "gpt-4.1", 1, 1, 1, 0.0),  # a key deleted from the table since
    ]
    out = summarize(rows, [a, b], 3600, NOW)
    by_key = {r["name"]: r for r in out["by_key"]}
    assert by_key["alice"] == {
        "id": a.id,
        "name": "alice",
        "key": a.shown + "…",
        "requests": 3,
        "prompt_tokens": 15,
        "completion_tokens": 25,
        "tokens": 40,
        "cost_usd": 0.75,
    }
    assert by_key["bob"]["requests"] == 3 and by_key["k_gone"]["key"] is None
    assert [r["name"] for r in out["by_key"]] == ["alice", "bob", "k_gone"]  # most spent first
    by_model = {r["model"]: r for r in out["by_model"]}
    assert by_model["gpt-4.1"]["requests"] == 6 and by_model["gpt-4.1"]["cost_usd"] == 0.375
    assert by_model["claude-sonnet-4.5"]["tokens"] == 10
    assert out["total"]["requests"] == 7 and out["total"]["cost_usd"] == 0.875


def test_the_series_has_every_step_oldest_first_with_quiet_steps_as_zeros() -> None:
    minute = bucket_of(NOW)
    rows = [(minute - 600, "k", "m", 1, 1, 2, 0.5), (minute, "k", "m", 1, 3, 4, 0.25)]
    out = summarize(rows, [], 3600, NOW)
    s = out["series"]
    assert out["step_s"] == USAGE_BUCKET and len(s["t"]) <= POINTS + 2
    assert s["t"] == sorted(s["t"]) and all(b - a == USAGE_BUCKET for a, b in zip(s["t"], s["t"][1:], strict=False))
    assert s["t"][0] <= NOW - 3600 < s["t"][0] + USAGE_BUCKET and s["t"][-1] == minute
    assert s["cost_usd"][s["t"].index(minute - 600)] == 0.5 and s["tokens"][-1] == 7
    assert sum(s["cost_usd"]) == 0.75 and s["cost_usd"].count(0.0) == len(s["t"]) - 2
    week = summarize(rows, [], 7 * 86400, NOW)
    assert week["step_s"] % USAGE_BUCKET == 0 and len(week["series"]["t"]) <= POINTS + 2
    assert sum(week["series"]["tokens"]) == 10


# -- the last generations ---------------------------------------------------------------
def summary(
    sid: str,
    *,
    status: str = "completed",
    model: str = "gpt-4.1",
    provider: str = "sim",
    ttft: float | None = 100.0,
    total: float = 1000.0,
    tokens: int = 10,
    error: GatewayError | None = None,
) -> RunSummary:
    return RunSummary(
        stream_id=sid,
        status=status,
        finish_reason="stop" if status == "completed" else "error",
        model=model,
        provider=provider,
        usage={"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens},
        usage_estimated=False,
        timing={"ttft_ms": ttft, "tokens_per_s": 10.0 if tokens > 1 else None, "total_ms": total},
        cost_usd=0.001,
        tokens=tokens,
        resumable=False,
        chat=Chat(id="c1", model=model, messages=[{"role": "user", "content": "hi"}]),
        error=error,
    )


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_a_generations_detail_has_a_timeline_in_order_and_its_cost() -> None:
    d = detail(summary("s_1", ttft=120.0, total=900.0), ended=NOW)
    events = [(e["event"], e["at_ms"]) for e in d["timeline"]]
    assert events == [("request", 0.0), ("upstream request", 0.0), ("first token", 120.0), ("completed", 900.0)]
    assert d["started"] == round(NOW - 0.9, 3) and d["ended"] == NOW
    assert d["cost_usd"] == 0.001 and d["mean_gap_ms"] == 100.0 and "error" not in d
    err = GatewayError("upstream_error", "provider said 500", status=500, extra={"attempts": 3})
    failed = detail(summary("s_2", status="failed", ttft=None, tokens=0, error=err), ended=NOW)
    assert failed["error"] == {
        "code": "upstream_error",
        "message": "provider said 500",
        "retryable": False,
        "upstream_status": 500,
    }
    assert failed["timeline"][1]["attempts"] == 3 and failed["timeline"][-1]["error"] == "upstream_error"
    assert all(e["event"] != "first token" for e in failed["timeline"])


def test_the_timeline_lists_each_upstream_attempt_when_the_summary_carries_them() -> None:
    """A summary with ``started_ns``, ``attempts`` (retries, fallbacks) and ``max_gap_s``, as the
    tracing and metrics changes give it, read by name: a fallback after a 503 shows as two attempts."""
    base = summary("s_3", ttft=300.0, total=1200.0)
    t0 = 1_800_000_000_000_000_000
    failed = SimpleNamespace(
        provider="a",
        model="m-a",
        start_ns=t0 + 1_000_000,
        end_ns=t0 + 101_000_000,
        error=GatewayError("upstream_error", "503"),
    )
    answered = SimpleNamespace(
        provider="b", model="m-b", start_ns=t0 + 102_000_000, end_ns=t0 + 290_000_000, error=None
    )
    fields = {f: getattr(base, f) for f in RunSummary.__dataclass_fields__}
    fields.update(owner=None, started_ns=t0, attempts=(failed, answered), max_gap_s=0.25)
    rich = SimpleNamespace(**fields)
    d = detail(rich, ended=t0 / 1e9 + 1.2)  # type: ignore[arg-type]
    assert [(e["event"], e["at_ms"]) for e in d["timeline"]] == [
        ("request", 0.0),
        ("upstream attempt 1", 1.0),
        ("upstream attempt 2", 102.0),
        ("first token", 300.0),
        ("completed", 1200.0),
    ]
    assert d["timeline"][1] == {
        "at_ms": 1.0,
        "event": "upstream attempt 1",
        "provider": "a",
        "model": "m-a",
        "took_ms": 100.0,
        "outcome": "upstream_error",
    }
    assert d["timeline"][2]["outcome"] == "answered" and d["timeline"][2]["took_ms"] == 188.0
    assert d["started"] == round(t0 / 1e9, 3) and d["max_gap_ms"] == 250.0
    assert detail(base, ended=NOW)["max_gap_ms"] is None  # a summary without it


def test_recent_keeps_only_the_last_n_details() -> None:
    r = Recent(keep=3)
    for i in range(5):
        r.add(summary(f"s_{i}"), NOW + i)
    assert list(r.details) == ["s_2", "s_3", "s_4"] and r.get("s_0") is None and r.finished == 5
    assert [g["stream_id"] for g in r.latest(2)] == ["s_4", "s_3"]
    assert r.latest(10)[0]["total_ms"] == 1000.0


def test_the_snapshot_has_in_flight_rate_percentiles_per_model_and_errors() -> None:
    r = Recent(window=60)
    r.add(summary("old", ttft=5000.0), NOW - 120)  # out of the window by the time of the snapshot
    for i, ttft in enumerate([100.0, 200.0, 300.0, 400.0]):
        r.add(summary(f"a{i}", ttft=ttft, total=1000.0 * (i + 1)), NOW - 10)
    r.add(summary("c1", model="claude", provider="anth", ttft=50.0), NOW - 5)
    err = GatewayError("upstream_rate_limited", "429", status=429)
    r.add(summary("f1", status="failed", ttft=None, tokens=0, provider="anth", model="claude", error=err), NOW - 1)
    r.add(summary("f2", status="failed", ttft=None, tokens=0, provider="anth", model="claude", error=err), NOW - 1)
    s = r.snapshot(NOW, {"gpt-4.1": 2, "claude": 1}, tokens_total=1500, prev=(NOW - 2, 1000), sockets=4)
    assert s["in_flight"] == 3 and s["in_flight_by_model"] == {"gpt-4.1": 2, "claude": 1} and s["sockets"] == 4
    assert s["tokens_per_s"] == 250.0
    # latencies are counted in 2 % buckets: a percentile is within 1 % of the true one
    assert s["ttft_p50_ms"] == pytest.approx(200.0, rel=0.01) and s["ttft_p99_ms"] == pytest.approx(400.0, rel=0.01)
    # (the 5000 ms one has left the window)
    assert s["ended_in_window"] == 7 and s["failed_in_window"] == 2 and s["generations_total"] == 8
    assert s["errors"] == [{"provider": "anth", "code": "upstream_rate_limited", "upstream_status": 429, "count": 2}]
    models = {m["model"]: m for m in s["models"]}
    assert models["gpt-4.1"]["generations"] == 4 and models["gpt-4.1"]["total_p50_ms"] == pytest.approx(
        2000.0, rel=0.01
    )
    assert models["gpt-4.1"]["total_p99_ms"] == pytest.approx(4000.0, rel=0.01) and models["claude"]["failed"] == 2
    assert models["claude"]["ttft_p50_ms"] == pytest.approx(50.0, rel=0.01) and models["claude"]["tokens"] == 10
    assert r.snapshot(NOW, {}, 1500, None)["tokens_per_s"] is None  # a rate needs two snapshots
    assert r.snapshot(NOW, {}, 1500, (NOW - 1, 1500))["tokens_per_s"] == 0.0


def test_several_workers_figures_add_up_to_what_one_process_with_all_of_them_shows() -> None:
    """Percentiles of the whole are not a function of each worker's: their histograms travel, and the
    view of two workers' exports (through JSON, as between processes) equals one process's that saw it all."""
    one, a, b = Recent(window=60), Recent(window=60), Recent(window=60)
    err = GatewayError("upstream_rate_limited", "429", status=429)
    runs = [
        (summary("old", ttft=9000.0), NOW - 120),  # out of the window
        *((summary(f"g{i}", ttft=10.0 * (i + 1), total=100.0 * (i + 1)), NOW - 30 + i) for i in range(9)),
        (summary("c1", model="claude", provider="anth", ttft=50.0), NOW - 5),
        (summary("f1", status="failed", ttft=None, tokens=0, provider="anth", model="claude", error=err), NOW - 2),
        (summary("f2", status="failed", ttft=None, tokens=0, provider="anth", model="claude", error=err), NOW - 1),
    ]
    for i, (run, ended) in enumerate(runs):
        one.add(run, ended)
        (a if i % 3 else b).add(run, ended)  # unevenly, and interleaved in time
    alone = one.snapshot(NOW, {"gpt-4.1": 3}, 900, (NOW - 1, 800), sockets=5)
    parts = [orjson.loads(orjson.dumps(r.export(NOW, latest=5))) for r in (a, b)]
    merged = merge_exports(parts, latest=5)
    view = live_view(
        NOW, 60, merged["models"], merged["errors"], merged["finished"], {"gpt-4.1": 3}, 900, (NOW - 1, 800), 5
    )
    assert view == alone
    assert view["ttft_p99_ms"] == pytest.approx(90.0, rel=0.01) and view["ttft_p50_ms"] == pytest.approx(50.0, rel=0.01)
    assert view["generations_total"] == 13 and view["ended_in_window"] == 12
    assert view["errors"][0]["count"] == 2  # one from each worker
    assert [g["stream_id"] for g in merged["latest"]] == [g["stream_id"] for g in one.latest(5)]  # newest first
    assert [g["stream_id"] for g in merged["latest"]] == ["f2", "f1", "c1", "g8", "g7"]


@given(st.lists(st.floats(min_value=0.001, max_value=3.6e6), min_size=1, max_size=300), st.sampled_from([50, 90, 99]))
def test_a_bucketed_percentile_is_within_one_per_cent_of_the_exact_one(values: list[float], q: int) -> None:
    tally = Tally()
    for v in values:
        tally.count(v, v, 1, False)
    exact = percentile(values, q)
    assert hist_percentile(tally.ttft, q) == pytest.approx(exact, rel=0.0101)
    assert hist_percentile(tally.total, q) == pytest.approx(exact, rel=0.0101)


def test_the_window_forgets_what_leaves_it_and_stays_small_at_any_rate() -> None:
    r = Recent(window=20)
    for i in range(20_000):  # 1,000 generations a second for the whole window
        r.add(summary(f"s{i}", ttft=50.0 + i % 500, total=900.0 + i % 4000), NOW - 20 + i / 1000)
    s = r.snapshot(NOW, {}, 0, None)
    assert s["ended_in_window"] == 20_000 and s["generations_total"] == 20_000
    assert len(r.slots) <= 21 and len(r.details) == r.keep
    assert sum(len(t.ttft) + len(t.total) for t in r.totals.values()) < 300  # buckets, not samples
    assert len(orjson.dumps(r.export(NOW))) < 40_000  # what a sibling worker sends once a second
    assert r.snapshot(NOW + 10, {}, 0, None)["ended_in_window"] == 10_000  # the older half has left
    assert r.snapshot(NOW + 21, {}, 0, None)["ended_in_window"] == 0
    assert r.totals == {} and r.slots == {}  # nothing left behind
    assert r.snapshot(NOW + 21, {}, 0, None)["ttft_p50_ms"] is None


# -- the key store ------------------------------------------------------------------------
async def test_memory_store_edits_keys_and_keeps_usage_rows_per_model_and_minute() -> None:
    store = MemoryKeyStore()
    rec, _ = new_record("ops", admin=True)
    await store.insert(rec)
    assert (await store.get(rec.id)).admin and rec.public()["admin"] is True  # type: ignore[union-attr]
    updated = await store.update(rec.id, {"rpm": 5, "models": ["gpt-*"], "admin": False})
    assert updated is not None and (updated.rpm, updated.models, updated.admin) == (5, ["gpt-*"], False)
    with pytest.raises(ValueError, match="'hash' cannot be changed"):
        await store.update(rec.id, {"hash": "x"})
    await store.add_usage(rec.id, 1, 2, 0.5, model="m", bucket=600)
    await store.add_usage(rec.id, 1, 2, 0.5, model="m", bucket=600)
    await store.add_usage(rec.id, 1, 1, 0.1, model="m", bucket=660)
    assert await store.usage_since(665) == [(660, rec.id, "m", 1, 1, 1, 0.1)]  # from the minute holding it
    assert (await store.usage_since(0))[0] == (600, rec.id, "m", 2, 2, 4, 1.0)
    assert await store.usage_since(0, 3600) == [(0, rec.id, "m", 3, 3, 5, 1.1)]
    assert (await store.get(rec.id)).requests == 3  # type: ignore[union-attr]


_OLD_SCHEMA = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, shown TEXT NOT NULL, created REAL NOT NULL,
    rpm INTEGER, tpm INTEGER, budget_usd REAL, models TEXT NOT NULL DEFAULT '', revoked REAL,
    requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0, last_used REAL
);
INSERT INTO api_keys (id, name, hash, shown, created, requests) VALUES ('k_old', 'old', 'h', 'tw_abcdefg', 1, 4);
"""


async def test_a_key_table_from_before_admin_keys_is_migrated_and_keeps_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.close()
    store = SQLiteKeyStore(str(path))
    try:
        old = await store.get("k_old")
        assert old is not None and old.admin is False and old.requests == 4
        rec, _ = new_record("boss", admin=True)
        await store.insert(rec)
        assert [(r.name, r.admin) for r in await store.list()] == [("old", False), ("boss", True)]
        changed = await store.update(rec.id, {"budget_usd": 2.5, "models": ["a", "b"], "rpm": None})
        assert changed is not None and (changed.budget_usd, changed.models, changed.admin) == (2.5, ["a", "b"], True)
        hour = int(time.time() // 3600) * 3600 - 3600  # the last whole hour: recent enough to be kept
        await store.add_usage(rec.id, 3, 4, 0.25, model="gpt-4.1", bucket=hour)
        await store.add_usage(rec.id, 3, 4, 0.25, model="gpt-4.1", bucket=hour)
        await store.add_usage(rec.id, 1, 1, 0.125, model="gpt-4.1", bucket=hour + 120)
        assert await store.usage_since(hour) == [
            (hour, rec.id, "gpt-4.1", 2, 6, 8, 0.5),
            (hour + 120, rec.id, "gpt-4.1", 1, 1, 1, 0.125),
        ]
        assert await store.usage_since(hour, 3600) == [(hour, rec.id, "gpt-4.1", 3, 7, 9, 0.625)]  # summed per step
        assert (await store.get(rec.id)).cost_usd == 0.625  # type: ignore[union-attr]
        await store.add_usage(rec.id, 1, 1, 0.0, model="gpt-4.1", bucket=600)  # (1970: past the retention)
        store._pruned = 0.0  # the hourly pruning is due
        await store.add_usage(rec.id, 1, 1, 0.0, model="gpt-4.1", bucket=hour)
        assert [r[0] for r in await store.usage_since(0)] == [hour, hour + 120]
    finally:
        await store.aclose()
    again = SQLiteKeyStore(str(path))  # opening a migrated file again changes nothing
    try:
        assert [(r.name, r.admin) for r in await again.list()] == [("old", False), ("boss", True)]
    finally:
        await again.aclose()
