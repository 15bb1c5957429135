"""``tokenwire bench`` and ``tokenwire loadtest`` as a user runs them (real processes, small runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from procs import Proc


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TOKENWIRE_")}
    return subprocess.run(
        [sys.executable, "-m", "tokenwire", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_bench_prints_the_table_and_valid_json(gateway: Proc) -> None:
    r = run_cli("bench", "--url", gateway.ws, "--runs", "2", "--json", "-")
    assert r.returncode == 0, r.stderr
    report = orjson.loads(r.stdout)
    assert "| model | transport | TTFT p50 / p95 / p99 (ms) | tokens/s p50 | 100 tokens" in r.stderr
    models = {x["model"] for x in report["results"]}
    assert models == {"gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"}
    for row in report["results"]:
        assert row["ok"] == row["runs"] == 2 and row["transport"] == "ws"
        assert row["tokens"]["p50"] == 100
        assert 0 < row["ttft_ms"]["p50"] <= row["ttft_ms"]["p99"] <= row["total_ms"]["p50"] * 2
        assert row["price_per_mtok"] is not None
        assert f"| {row['model']} | ws |" in r.stderr
    assert report["runs"] == 2 and report["simulated"]["gpt-4.1"] is True


def test_bench_compares_ws_sse_and_poll(gateway: Proc, tmp_path: Path) -> None:
    chart = tmp_path / "bench.png"
    out = tmp_path / "bench.json"
    r = run_cli(
        "bench", "--url", gateway.ws, "--runs", "2", "--models", "deepseek-v3.2", "--transport", "ws,sse,poll",
        "--poll-interval", "0.02", "--json", str(out), "--chart", str(chart),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = orjson.loads(out.read_bytes())
    assert [(x["model"], x["transport"]) for x in report["results"]] == [
        ("deepseek-v3.2", "ws"),
        ("deepseek-v3.2", "sse"),
        ("deepseek-v3.2", "poll"),
    ]
    assert all(x["ok"] == 2 and x["tokens"]["p50"] == 100 for x in report["results"])
    assert {c["versus"] for c in report["comparison"]} == {"sse", "poll"}
    assert "Often claimed" in r.stdout and "verdict" in r.stdout
    data = chart.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in data[-12:]


def test_plot_without_the_bench_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """matplotlib hidden (a module named matplotlib that fails to import): one line, before any run."""
    fake = tmp_path / "hide" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "hide"), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-m", "tokenwire", "loadtest", "--plot", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "tokenwire loadtest: figures need matplotlib, which is not installed: pip install 'tokenwire[bench]'"
    ]
    assert not (tmp_path / "x.png").exists()


def test_bench_says_when_the_gateway_is_not_there() -> None:
    r = run_cli("bench", "--url", "ws://127.0.0.1:9/ws/chat", "--runs", "1")
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr


def test_loadtest_small_stream_run(tmp_path: Path) -> None:
    plot, page = tmp_path / "load.png", tmp_path / "load.html"
    r = run_cli(
        "loadtest", "--streams", "20", "--tps", "50", "--tokens", "30", "--duration", "2", "--warmup", "1",
        "--clients", "1", "--json", "-", "--plot", str(plot), "--report", str(page),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and f"figure written to {plot}" in r.stderr
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 1 and "added TTFT" in html
    report = orjson.loads(r.stdout)
    assert report["errors"] == 0 and report["tokens_relayed"] > 500
    assert report["added_ttft_ms"]["n"] > 0 and report["added_gap_ms"]["n"] > 0
    assert report["gateway_cpu_us_per_token"] > 0 and report["memory_per_socket_kb"] is not None
    assert "added TTFT" in r.stderr


def test_loadtest_idle_sockets() -> None:
    r = run_cli("loadtest", "--mode", "idle", "--streams", "50", "--duration", "1.5", "--warmup", "0.5",
                "--heartbeat", "0.5", "--clients", "2", "--json", "-")  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    report = orjson.loads(r.stdout)
    assert report["sockets_open_at_end"] == 50 and report["sockets_closed_unexpectedly"] == 0
    assert report["memory_per_socket_kb"] is not None
