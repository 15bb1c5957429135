"""tests/exhaustive: pure like tests/unit (no processes, no sockets) but slow: property-based fuzzing
and parsers fed every recorded stream cut at every byte. Run with the e2e layer, not the fast one."""

from __future__ import annotations

import pytest
from noio import forbid_io


@pytest.fixture(autouse=True)
def _no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_io(monkeypatch)
