"""Helpers for the access and limit tests: the ``tokenwire keys``/``usage`` CLI and keyed gateways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_") and not k.endswith("_API_KEY")}
    env["TOKENWIRE_DB"] = str(db)
    return subprocess.run(
        [sys.executable, "-m", "tokenwire", *args], env=env, capture_output=True, text=True, timeout=30
    )


def create_key(db: Path, name: str, *opts: str) -> str:
    out = cli(db, "keys", "create", "--name", name, *opts)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("tw_") and len(key) > 40
    return key


def usage(db: Path) -> dict[str, dict]:
    out = cli(db, "usage", "--json")
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in orjson.loads(out.stdout)}
