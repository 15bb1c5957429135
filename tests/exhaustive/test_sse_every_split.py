"""The SSE decoder on every recorded provider stream cut in two at every byte (slow: the 67 KB
DeepSeek stream alone is 67,000 decodes). The faster SSE checks: unit/test_sse.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from parseref import decode_split, reference_events
from paths import FIXTURES

SSE_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.sse"))


@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_every_fixture_at_every_byte_boundary(fixtures_dir: Path, name: str) -> None:
    raw = (fixtures_dir / name).read_bytes()
    expected = reference_events(raw)
    assert expected, "fixture yields events"
    assert decode_split(raw, []) == expected
    # Two pieces, cut at every possible byte (this splits multi-byte characters, CRLFs, "data:")
    for cut in range(1, len(raw)):
        assert decode_split(raw, [cut]) == expected, f"split at byte {cut}"
