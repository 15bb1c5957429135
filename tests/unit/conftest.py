"""tests/unit: no processes, no sockets, no network; the whole folder runs in seconds."""

from __future__ import annotations

import pytest
from noio import forbid_io

from tokenwire.config import load_settings
from tokenwire.runtime.gateway import Gateway


@pytest.fixture(autouse=True)
def _no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_io(monkeypatch)


@pytest.fixture
async def gw():
    """A gateway in this process with the seed's simulated models, no server (runs are begun directly)."""
    settings = load_settings(None, overrides={"host": "127.0.0.1", "port": 0, "db_path": ":memory:"})
    gateway = Gateway(settings)
    yield gateway
    await gateway.aclose()
