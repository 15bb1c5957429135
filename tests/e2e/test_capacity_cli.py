"""``tokenwire capacity`` end to end, tiny: a real fake upstream, gateway and client processes, pinned."""

from __future__ import annotations

import orjson
import pytest
from test_bench_cli import run_cli

from tokenwire.bench.capacity import COLUMNS


@pytest.mark.serial  # counts stalls against the clock
def test_a_tiny_run_prints_the_table_and_sane_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cap.json"
    args = ["--streams", "5", "--window", "3", "--warmup", "1", "--floor-window", "2", "--tokens", "20"]
    r = run_cli("capacity", *args, "--json", str(out), timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 3, r.stdout  # heading, rule, one row
    assert [c.strip() for c in table[0].strip("|").split("|")] == [c for c, _ in COLUMNS]
    assert len(table[2].strip("|").split("|")) == len(COLUMNS)
    assert "Streams per core:" in r.stdout and "- 1 worker(s):" in r.stdout
    assert "bare-relay floor at 5 streams" in r.stderr and "connecting 5 streams" in r.stderr  # progress lines

    report = orjson.loads(out.read_bytes())
    (row,) = report["rows"]
    assert row["streams"] == 5 and row["workers"] == 1 and row["errors"] == 0
    # every stream got tokens and is counted once; whether none stalled is this machine's figure
    # (the gateway pinned to one core shares it with whatever else runs), not the smoke test's
    assert row["silent"] == 0 and row["stall_free"] + row["stalled"] == 5, row
    if row["stalled"]:
        assert row["verdict"] != "ok", row  # a stall is never reported as a clean row
    # every reply that ended in the window brought all of its 20 tokens, and both counts of tokens agree
    assert row["generations"] >= 5 and row["short_replies"] == 0
    assert row["tokens"] == row["tokens_seen_by_streams"] > 0
    assert 0.5 * row["due_tokens_per_s"] <= row["tokens_per_s"] <= 1.1 * row["due_tokens_per_s"], row
    assert row["gateway_us_per_token"] > 0 and row["floor_us_per_msg"] > 0
    assert row["floor_multiple"] == round(row["gateway_us_per_token"] / row["floor_us_per_msg"], 2)
    if row["pinned"]:  # a machine with 2+ CPUs: the gateway on the first, the load on the rest
        assert row["gateway_cores"] == [min(row["gateway_cores"] + row["load_cores"])]
        assert set(row["gateway_cores"]).isdisjoint(row["load_cores"])
    assert report["floor"]["5"]["offered_share"] > 0.9
