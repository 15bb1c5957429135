"""Shared fixtures: real gateway and fake-upstream processes on ephemeral ports.

Tests by kind, one folder each (a marker of the same name is added to every test in it):
  unit/        no processes, no sockets (enforced: noio.py); the fast layer, ``pytest tests/unit``
  exhaustive/  just as pure, but slow: fuzzing, parsers fed streams cut at every byte
  e2e/         real gateway processes over real sockets, browsers, Redis
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from paths import FIXTURES, SEEDS  # noqa: F401 (SEEDS: where the seed files are, for tests that want them)
from procs import Proc, start

KINDS = ("unit", "exhaustive", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        kind = item.path.relative_to(here).parts[0] if item.path.is_relative_to(here) else ""
        if kind in KINDS:
            item.add_marker(kind)


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"SSE fixtures not found at {FIXTURES} (../shared must sit beside the repo)")
    return FIXTURES


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``tokenwire`` subcommands; every process is stopped at the end of the test."""
    procs: list[Proc] = []

    def _spawn(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> Proc:
        proc = start(args, env=env, timeout=timeout, cwd=tmp_path)
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        proc.stop()
        # shown by pytest only when the test failed: what each process said
        tail = "\n".join(proc.text().splitlines()[-40:])
        print(f"--- output of tokenwire process {proc.pid} (port {proc.port}) ---\n{tail}")


@pytest.fixture
def sim(spawn: Callable[..., Proc]) -> Proc:
    """A fake OpenAI-compatible upstream (``tokenwire simulate``) at the seeds' speeds."""
    return spawn("simulate", "--port", "0")


@pytest.fixture
def gateway(spawn: Callable[..., Proc], tmp_path: Path) -> Proc:
    """A zero-config gateway (embedded simulated models, 20x speed) with its own SQLite file."""
    return spawn(
        "serve",
        "--port",
        "0",
        env={"TOKENWIRE_DB": str(tmp_path / "gw.db"), "TOKENWIRE_SIMULATED_SPEED": "20"},
    )


@pytest.fixture
def relay(spawn: Callable[..., Proc], sim: Proc, tmp_path: Path) -> Proc:
    """A gateway whose only provider is the fake upstream ``sim`` (via OPENAI_BASE_URL)."""
    return spawn(
        "serve",
        "--port",
        "0",
        env={
            "OPENAI_API_KEY": "sk-test-key-never-shown",
            "OPENAI_BASE_URL": sim.http + "/v1",
            "TOKENWIRE_DB": str(tmp_path / "relay.db"),
        },
    )


@pytest.fixture(scope="module")
def browser():
    """A headless Debian Chromium per test module (Playwright's sync API; ended before other modules'
    asyncio tests run, so the two never share a thread's event loop)."""
    from playwright.sync_api import sync_playwright
    from webutil import CHROMIUM_ARGS, chromium_path

    exe = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()
