"""tests/unit: no processes, no sockets, no network; the whole folder runs in seconds."""

from __future__ import annotations

import pytest
from noio import forbid_io


@pytest.fixture(autouse=True)
def _no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_io(monkeypatch)
