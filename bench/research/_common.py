"""What the research scripts share: this tree's /proc reader, process starter and fake upstream.

A script here measures whichever gateway ``PYTHONPATH`` points at (``python -m tokenwire serve``
runs in a child process with the inherited environment), while everything on the measuring side
comes from the tree the script lives in, so an A/B between two trees changes only the gateway:

* ``cpu_seconds``: ``src/tokenwire/procstat.py`` of this tree, loaded by path (the tree under
  test may predate it);
* ``start``: ``tests/procs.py`` of this tree;
* ``simulate``: ``tokenwire simulate`` of this tree (``PYTHONPATH`` set to this tree's ``src``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

sys.path.insert(0, str(ROOT / "tests"))
from procs import Proc, start  # noqa: E402

__all__ = ["ROOT", "SRC", "Proc", "cpu_seconds", "gateway_tree", "simulate", "start"]


def _load_procstat():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_research_procstat", SRC / "tokenwire" / "procstat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_seconds = _load_procstat().cpu_seconds


def simulate(*args: str) -> Proc:
    """``tokenwire simulate --port 0 ARGS`` from this tree, whatever PYTHONPATH says."""
    return start(["simulate", "--port", "0", *args], env={"PYTHONPATH": str(SRC)})


def gateway_tree() -> str:
    """Where ``python -m tokenwire`` (the gateway under test) is imported from, with this environment."""
    out = subprocess.run(
        [sys.executable, "-c", "import os, tokenwire; print(os.path.dirname(tokenwire.__file__))"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=True,
    )
    return out.stdout.strip()
