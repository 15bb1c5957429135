"""The pure parts of ``tokenwire capacity`` and ``loadtest``: stall counting, percentiles, core plans, the table."""

from __future__ import annotations

import argparse

import pytest

from tokenwire.bench.capacity import (
    COLUMNS,
    due_tokens_per_s,
    parse_list,
    per_core_summary,
    plan_cores,
    render_table,
    verdict,
)
from tokenwire.bench.stats import StreamStalls, hist_add, hist_merge, hist_percentile, hist_summary, stall_summary

W0, W1 = 10.0, 20.0  # the measuring window


def _stream(recv_sent: list[tuple[float, float]], replies: list[int] | None = None) -> StreamStalls:
    s = StreamStalls(0.2, W0, W1)
    for i, (recv, sent) in enumerate(recv_sent):
        if replies and i in replies:
            s.new_reply()
        s.token(recv, sent)
    return s


def test_a_gap_over_the_threshold_inside_the_window_is_a_stall() -> None:
    s = _stream([(11.0, 11.0), (11.02, 11.02), (11.25, 11.04), (11.27, 11.06)])
    assert (s.tokens, s.stalls, s.upstream_stalls) == (4, 1, 0)
    assert s.max_gap == pytest.approx(0.23)
    assert s.row() == [4, 1, 0, 230.0]


def test_a_gap_at_the_threshold_is_not_a_stall() -> None:
    s = _stream([(11.0, 11.0), (11.2, 11.2)])
    assert s.stalls == 0 and s.max_gap == pytest.approx(0.2)


def test_the_gap_between_two_replies_is_not_an_inter_token_gap() -> None:
    s = _stream([(11.0, 11.0), (11.02, 11.02), (11.5, 11.5), (11.52, 11.52)], replies=[2])
    assert s.stalls == 0 and s.tokens == 4


def test_gaps_count_when_they_overlap_the_window_and_tokens_only_inside_it() -> None:
    # before the window: ignored; across its start and its end: counted; after it: ignored
    s = _stream([(9.0, 9.0), (9.5, 9.5), (10.1, 10.1), (10.12, 10.12), (19.9, 19.9), (20.3, 20.3), (21.0, 21.0)])
    assert s.tokens == 3  # 10.1, 10.12, 19.9
    assert s.stalls == 3  # 9.5 -> 10.1 (crosses w0), 10.12 -> 19.9, 19.9 -> 20.3 (crosses w1); not 20.3 -> 21.0


def test_a_stall_the_upstream_wrote_itself_is_marked_as_the_upstreams() -> None:
    s = _stream([(11.0, 11.0), (11.3, 11.29), (11.32, 11.31), (11.6, 11.33)])
    assert (s.stalls, s.upstream_stalls) == (2, 1)


def test_stall_summary_counts_streams_not_stalls_and_a_silent_stream_is_stalled() -> None:
    rows = [[100, 0, 0, 25.0], [100, 3, 0, 400.0], [0, 0, 0, 0.0], [90, 1, 1, 250.0], [100, 0, 0, 30.0]]
    s = stall_summary(rows)
    assert s == {
        "streams": 5,
        "stall_free": 2,
        "stalled": 3,
        "stalled_by_upstream": 1,
        "silent": 1,
        "worst_gap_ms": 400.0,
    }
    assert stall_summary([])["stall_free"] == 0


def test_percentiles_are_nearest_rank_in_ms() -> None:
    h: dict[int, int] = {}
    for ms in range(1, 101):  # 1..100 ms
        hist_add(h, ms / 1000)
    assert hist_percentile(h, 50) == 50.0
    assert hist_percentile(h, 99) == 99.0
    assert hist_percentile(h, 100) == 100.0
    assert hist_percentile({}, 50) is None
    one: dict[int, int] = {}
    hist_add(one, 0.00123)
    assert hist_summary(one) == {"n": 1, "p50": 1.23, "p90": 1.23, "p99": 1.23, "p99.9": 1.23, "max": 1.23}


def test_histograms_merge_across_processes_through_json_keys() -> None:
    into = {5: 2}
    hist_merge(into, {"5": 1, "7": 4})
    assert into == {5: 3, 7: 4}


def test_cores_a_worker_each_the_rest_for_the_load() -> None:
    p = plan_cores([0, 1, 2, 3], 2)
    assert (p.gateway, p.load, p.pinned, p.note) == ((0, 1), (2, 3), True, "")
    one = plan_cores([1, 0], 1)
    assert (one.gateway, one.load) == ((0,), (1,))


def test_workers_that_leave_no_core_for_the_load_run_unpinned_with_a_note() -> None:
    p = plan_cores([0, 1], 2)
    assert not p.pinned and p.load == (0, 1)
    assert "2 worker(s) cannot be pinned on 2 CPU(s)" in p.note


def test_lists_of_n() -> None:
    assert parse_list("50,100, 250") == [50, 100, 250]
    for bad in ("", "a,b", "0,5", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_list(bad)


def test_tokens_due_allow_for_the_upstreams_ttft_between_replies() -> None:
    assert due_tokens_per_s(100, 50, 100, 0.1) == pytest.approx(100 * 100 / 2.1)
    assert due_tokens_per_s(10, 0, 100, 0.1) == 0.0


def _row(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "workers": 1,
        "pinned": True,
        "streams": 250,
        "streams_per_worker": 250,
        "tokens_per_s": 11_900.0,
        "due_tokens_per_s": 11_904.8,
        "interval_ms": 20.0,
        "gateway_us_per_token": 40.5,
        "floor_us_per_msg": 16.2,
        "floor_multiple": 2.5,
        "gateway_core_share": 0.482,
        "gateway_wait_share": 0.02,
        "added_ttft_p50_ms": 1.5,
        "added_ttft_p99_ms": 4.25,
        "added_gap_p99_ms": 1.75,
        "stall_free": 250,
        "stalled": 0,
        "stalled_by_upstream": 0,
        "load_core_share": 0.6,
        "client_lag_p99_ms": 2.5,
        "load_avg": 1.25,
        "errors": 0,
        "short_replies": 0,
    }
    row.update(over)
    return row


def test_verdicts_name_what_limited_the_row() -> None:
    assert verdict(_row()) == "ok"
    assert verdict(_row(gateway_core_share=0.95)) == "gateway saturated"
    loadgen = verdict(_row(load_core_share=0.97, tokens_per_s=9_000.0, gateway_core_share=0.4))
    assert loadgen.startswith("load generator short of CPU (its cores 97 % busy)")
    assert "offered 76 % of the load; gateway at 40 % of its core(s) there" in loadgen
    assert verdict(_row(client_lag_p99_ms=45.0)) == "client lag p99 45 ms: the gaps and TTFTs include it"
    late = verdict(_row(client_lag_p99_ms=45.0, tokens_per_s=10_000.0))
    assert late.startswith("load generator short of CPU (client lag p99 45 ms > the 20 ms token interval)")
    assert "upstream itself late on 3 streams" in verdict(_row(stalled_by_upstream=3, stalled=3))
    assert verdict(_row(stalled=2, stall_free=248)) == "2 stalled streams"
    assert verdict(_row(pinned=False, load_core_share=None)) == "unpinned"
    assert "waited for its core 30 %" in verdict(_row(gateway_wait_share=0.3))
    both = verdict(_row(load_core_share=0.97, gateway_wait_share=0.85))
    assert both.startswith("load generator short of CPU") and "; gateway waited for its core 85 %" in both
    assert verdict(_row(short_replies=1)).startswith("1 replies with missing tokens")


def test_the_table_is_markdown_with_one_row_per_run_and_every_column() -> None:
    rows = [_row(verdict="ok"), _row(workers=2, streams=1000, streams_per_worker=500, pinned=False, verdict="x")]
    lines = render_table(rows).splitlines()
    assert len(lines) == 4
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == [c for c, _ in COLUMNS]
    assert lines[1].count("|") == len(COLUMNS) + 1
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(cells) == len(COLUMNS)
    assert cells[:7] == ["1", "250", "11,900 (11,905)", "40.5", "16.2", "2.50×", "48 (2)"]
    assert cells[7:12] == ["1.50 / 4.25", "1.75", "250 / 250", "60 (2.50)", "1.2"]
    two = [c.strip() for c in lines[3].strip("|").split("|")]
    assert two[0] == "2 (unpinned)" and two[1] == "1,000 (500)"


def test_a_missing_figure_is_a_dash_not_a_zero() -> None:
    line = render_table([_row(floor_us_per_msg=None, floor_multiple=None, added_ttft_p99_ms=None, verdict="ok")])
    cells = [c.strip() for c in line.splitlines()[2].strip("|").split("|")]
    assert cells[4] == "–" and cells[5] == "–" and cells[7] == "1.50 / –"


def test_streams_per_core_is_the_largest_stall_free_n_divided_by_the_workers() -> None:
    rows = [
        _row(workers=1, streams=250, verdict="ok"),
        _row(workers=1, streams=500, stall_free=500, verdict="ok"),
        _row(workers=1, streams=1000, stall_free=990, verdict="10 stalled streams"),
        _row(workers=2, streams=1000, stall_free=1000, verdict="ok"),
        _row(workers=4, streams=400, stall_free=399, verdict="gateway saturated"),
    ]
    lines = per_core_summary(rows)
    assert lines[0] == (
        "- 1 worker(s): **500 stall-free streams per core** (500 in all: the largest N tried with every "
        "stream stall-free; verdict: ok)"
    )
    assert lines[1].startswith("- 2 worker(s): **500 stall-free streams per core** (1,000 in all")
    assert lines[2] == "- 4 worker(s): streams stalled at every N tried (smallest: 400)"


def test_a_gateway_setting_becomes_its_variable_and_a_typo_is_refused() -> None:
    from tokenwire.bench.loadtest import gateway_settings

    assert gateway_settings(["gc_policy=default", "Event_Loop=asyncio"]) == {
        "TOKENWIRE_GC_POLICY": "default",
        "TOKENWIRE_EVENT_LOOP": "asyncio",
    }
    assert gateway_settings(None) == {}
    for bad in ("gc_polcy=default", "gc_policy", "providers=x"):
        with pytest.raises(ValueError, match="expected NAME=VALUE"):
            gateway_settings([bad])
