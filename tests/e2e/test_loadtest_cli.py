"""``tokenwire loadtest`` as a user meets it: defaults in --help, progress on a terminal, figures explained."""

from __future__ import annotations

import shlex
import shutil

import orjson
import pytest
from test_bench_cli import run_cli
from test_client_cli import TOKENWIRE, Tmux, clean_env

SMALL = ["--streams", "8", "--tps", "50", "--tokens", "30", "--duration", "2", "--warmup", "1", "--clients", "1"]


def test_help_shows_every_default_and_what_each_figure_means() -> None:
    r = run_cli("loadtest", "--help")
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())  # argparse wraps lines
    for option, default in [("--streams", "100"), ("--tps", "50.0"), ("--duration", "10.0"), ("--warmup", "3.0"),
                            ("--clients", "2"), ("--ttft-ms", "100.0"), ("--tokens", "100")]:  # fmt: skip
        assert option in out
        assert f"(default: {default})" in out, (option, default)
    for figure in ("added TTFT:", "relay latency:", "added gap:", "gateway CPU:", "client event-loop lag:"):
        assert figure in r.stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_on_a_terminal_it_shows_progress_then_the_report_with_its_legend() -> None:
    cmd = f"{shlex.join([*TOKENWIRE, 'loadtest', *SMALL])}; echo EXIT=$?; sleep 120"
    term = Tmux(cmd, clean_env())
    try:
        term.wait(r"measuring \[[#.]+\] \d/2 s", within=60)  # seen while it runs, not only at the end
        screen = term.wait(r"EXIT=\d", within=90)
        assert "EXIT=0" in screen, screen
        assert "what the figures mean" in screen and "added gap: how much longer" in screen
        assert "measuring [" not in screen.split("tokenwire loadtest —")[-1]  # the progress line is gone
    finally:
        term.kill()


def test_piped_there_is_no_progress_and_no_negative_added_gap() -> None:
    r = run_cli("loadtest", *SMALL, "--json", "-")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "\r" not in r.stderr and "measuring [" not in r.stderr
    report = orjson.loads(r.stdout)
    gap = report["added_gap_ms"]
    assert gap["n"] > 0
    assert all(gap[k] >= 0 for k in ("p50", "p90", "p99", "max")), gap
    assert "what the figures mean" in r.stderr


def test_a_token_that_catches_up_adds_no_gap() -> None:
    from tokenwire.bench.loadtest import added_gap

    assert added_gap(0.004, 0.001) == pytest.approx(0.003)
    assert added_gap(0.001, 0.004) == 0.0  # arrived sooner after the previous one than it was written: not negative
