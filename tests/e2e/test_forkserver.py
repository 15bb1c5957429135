"""A process forked from the test zygote (tests/forkserver.py) behaves as a fresh ``python -m tokenwire``.

Each case runs both ways and compares: what the process printed, its exit code, the environment
and working directory it ran in. If the zygote leaked its own state into a child, these differ.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import forkserver
import orjson
import pytest
from eventually import eventually
from procs import child_env, start


def _run(args: list[str], env: dict[str, str], cwd: Path, fork: bool) -> tuple[int, str]:
    """Run to its end (no "listening on" line expected): exit code and output."""
    if fork:
        popen = forkserver.spawn(args, env, cwd)
        assert isinstance(popen, forkserver.Forked)
    else:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tokenwire", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    assert popen.stdout is not None
    out = popen.stdout.read().decode()
    return popen.wait(20), out


@pytest.fixture
def base_env() -> dict[str, str]:
    return child_env()


def test_a_start_up_failure_is_the_same_exit_code_and_message(tmp_path: Path, base_env: dict[str, str]) -> None:
    (tmp_path / "bad.toml").write_text('port = "x"\n')
    args = ["serve", "--port", "0", "--config", "bad.toml"]  # relative: found only in the child's cwd
    forked = _run(args, base_env, tmp_path, fork=True)
    fresh = _run(args, base_env, tmp_path, fork=False)
    assert forked == fresh
    assert forked[0] == 2 and "configuration error: bad.toml: unknown section [port]" in forked[1]


def test_a_child_has_the_tests_environment_and_directory_not_the_zygotes(tmp_path: Path) -> None:
    first = start(["serve", "--port", "0"], env={"TOKENWIRE_DB": "first.db"}, cwd=tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    second = start(["serve", "--port", "0"], env={"TOKENWIRE_DB": "second.db"}, cwd=other)
    try:
        assert isinstance(first.popen, forkserver.Forked) and isinstance(second.popen, forkserver.Forked)
        assert first.pid != second.pid
        for proc in (first, second):
            health = orjson.loads(urllib.request.urlopen(proc.http + "/healthz", timeout=10).read())
            assert health["pid"] == proc.pid
        assert "conversations: first.db" in first.text() and "conversations: second.db" in second.text()
        eventually(lambda: (tmp_path / "first.db").exists() and (other / "second.db").exists(), timeout=10)
        assert not (tmp_path / "second.db").exists() and not (other / "first.db").exists()
    finally:
        codes = [first.stop(signal.SIGTERM), second.stop(signal.SIGTERM)]
    assert codes == [0, 0]  # a drained gateway exits 0, as a fresh one does
    assert "draining" in first.text()


def test_a_signal_ends_a_forked_child_with_the_same_code_as_a_fresh_one(tmp_path: Path) -> None:
    forked = start(["simulate", "--port", "0"], cwd=tmp_path)
    fresh = start(["simulate", "--port", "0"], cwd=tmp_path, prefix=["env"])  # a prefix: never forked
    assert isinstance(forked.popen, forkserver.Forked) and isinstance(fresh.popen, subprocess.Popen)
    assert forked.stop(signal.SIGKILL) == fresh.stop(signal.SIGKILL) == -signal.SIGKILL
