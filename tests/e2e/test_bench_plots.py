"""Benchmark figures (tokenwire.bench.plots, matplotlib; in e2e: its font cache runs fc-list): PNG bytes, one-file HTML,
and the one-line hint when the ``bench`` extra is missing."""

from __future__ import annotations

import base64
import re
import sys

import pytest

from tokenwire.bench import plots

REPORT = {
    "mode": "stream",
    "streams": 100,
    "tps": 50.0,
    "date": "2026-12-03 12:00 UTC",
    "machine": "test x86_64, 2 CPUs",
    "gateway_cpu_us_per_token": 21.5,
    "added_ttft_ms": {"n": 10, "p50": 1.2, "p90": 2.0, "p99": 4.0, "p99.9": 5.0, "max": 6.0},
    "relay_latency_ms": {"n": 10, "p50": 0.3, "p90": 0.5, "p99": 1.0, "p99.9": 1.5, "max": 2.0},
    "added_gap_ms": {"n": 10, "p50": 0.1, "p90": 0.2, "p99": 0.9, "p99.9": None, "max": 1.0},
    "rss_samples_mb": [(0.0, 40.0), (5.0, 41.0), (10.0, 41.5)],
    "rss_growth_mb_per_min": 0.5,
}
PNG = b"\x89PNG\r\n\x1a\n"


def size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_loadtest_figure_is_a_png_with_both_panels() -> None:
    fig = plots.loadtest_figure(REPORT)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["added TTFT", "relay latency", "added gap"]
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights[-1] == 5.0 and heights[0] == 0.0  # p99.9 of added TTFT; a missing one drawn as 0
    data = plots.png(fig)
    assert data.startswith(PNG) and size(data) == (1000, 420)


def test_idle_report_plots_the_loop_lag_alone() -> None:
    idle = {"mode": "idle", "streams": 5, "client_loop_lag_ms": {"p50": 0.1, "p90": 0.2, "p99": 0.3, "p99.9": 0.4}}
    fig = plots.loadtest_figure(idle)
    assert len(fig.axes) == 1
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["client loop lag"]


def test_bench_figure_has_a_bar_per_result() -> None:
    report = {
        "date": "2026-12-03T12:00:00+00:00",
        "runs": 2,
        "max_tokens": 100,
        "transports": ["ws", "sse"],
        "results": [
            {"model": "m", "transport": "ws", "ttft_ms": {"p50": 5.0}, "total_ms": {"p50": 50.0}},
            {"model": "m", "transport": "sse", "ttft_ms": {"p50": None}, "total_ms": {"p50": 60.0}},
        ],
    }
    fig = plots.bench_figure(report)
    assert [round(p.get_width(), 1) for p in fig.axes[0].patches] == [5.0, 0.0]
    assert [round(p.get_width(), 1) for p in fig.axes[1].patches] == [50.0, 60.0]
    assert plots.png(fig).startswith(PNG)


def test_html_report_is_one_file_with_the_figure_embedded() -> None:
    page = plots.html_report("tokenwire <loadtest>", "a & b", [plots.loadtest_figure(REPORT)], {"x": "<y>"})
    assert "<title>tokenwire &lt;loadtest&gt;</title>" in page and "a &amp; b" in page and "&lt;y&gt;" in page
    (b64,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(b64).startswith(PNG)
    assert "http" not in page.replace("<!doctype html>", "")  # nothing fetched: one self-contained file


def test_missing_extra_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(plots.MissingExtra) as exc:
        plots.require()
    assert "pip install 'tokenwire[bench]'" in str(exc.value) and "\n" not in str(exc.value)
