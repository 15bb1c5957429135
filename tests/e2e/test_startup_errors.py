"""Start-up failures end in one line saying what is wrong and what to do, exit code 2, no traceback.

Each case runs `python -m tokenwire serve` as a real process and reads its stderr.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 30


def serve(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "tokenwire", "serve", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )


def one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tokenwire: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_port_in_use(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve(tmp_path, ["--port", str(port), "--db", ":memory:"])
    one_line(proc, f"port {port}", "already in use", "--port")


def test_host_that_does_not_resolve(tmp_path) -> None:
    proc = serve(tmp_path, ["--host", "no-such-host.invalid", "--port", "0", "--db", ":memory:", "--insecure-open"])
    one_line(proc, "cannot resolve host 'no-such-host.invalid'", "--host")


def test_db_in_a_folder_that_cannot_exist(tmp_path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    db = tmp_path / "afile" / "tokenwire.db"
    proc = serve(tmp_path, ["--port", "0", "--db", str(db)])
    one_line(proc, f"cannot open the conversation database {db}", ":memory:")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_db_in_a_read_only_folder(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        proc = serve(tmp_path, ["--port", "0", "--db", str(ro / "sub" / "tokenwire.db")])
    finally:
        ro.chmod(stat.S_IRWXU)
    one_line(proc, "cannot open the conversation database", "writable")


def test_db_on_a_read_only_file(tmp_path) -> None:
    """Also as root: /proc refuses new files whoever asks."""
    proc = serve(tmp_path, ["--port", "0", "--db", "/proc/tokenwire-test/tokenwire.db"])
    one_line(proc, "cannot open the conversation database /proc/tokenwire-test/tokenwire.db")


def test_bad_redis_url(tmp_path) -> None:
    proc = serve(tmp_path, ["--port", "0"], {"TOKENWIRE_REDIS_URL": "localhost:6379"})
    one_line(proc, "redis_url is not a Redis URL", "redis://")


def test_unreachable_redis(tmp_path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve(tmp_path, ["--port", "0"], {"TOKENWIRE_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    one_line(proc, f"cannot reach Redis at redis://127.0.0.1:{port}/0", "start Redis")


def test_redis_url_without_the_redis_extra(tmp_path) -> None:
    """The redis package made unimportable in the child, as on an install without the extra."""
    blocker = tmp_path / "noredis"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoRedis:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'redis' or name.startswith('redis.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoRedis())\n"
    )
    pythonpath = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)
    check = subprocess.run(
        [sys.executable, "-c", "import redis"], env={"PYTHONPATH": pythonpath}, capture_output=True, text=True
    )
    assert check.returncode != 0 and "No module named 'redis'" in check.stderr  # the blocker works
    proc = serve(
        tmp_path, ["--port", "0"], {"TOKENWIRE_REDIS_URL": "redis://127.0.0.1:6379/0", "PYTHONPATH": pythonpath}
    )
    one_line(proc, "redis package is not installed", "pip install 'tokenwire[redis]'")


def test_unreachable_redis_with_workers(tmp_path) -> None:
    """`serve --workers 2`: the worker's one line, the supervisor's one line, exit code 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve(tmp_path, ["--port", "0", "--workers", "2"], {"TOKENWIRE_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("tokenwire: ") for line in lines) and len(lines) <= 2, lines
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in lines[0]
